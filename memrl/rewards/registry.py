"""Reward registry: named built-in rewards, user rewards by import path, weighted composition.

A reward is any function ::

    def my_reward(batch: RewardBatch, **kwargs) -> list[float]:
        ...  # one finite float per completion, len(batch) values

(``RewardBatch`` is in ``memrl.rewards.batch``). Config names it either by a built-in name
(:data:`BUILTIN_REWARDS`) or by import path ``"package.module:function"``; the keyword arguments
of its :class:`RewardSpec` are passed on every call. Rewards should be pure: when one raises,
the composer re-runs it on each sample alone to name the sample at fault.

:class:`RewardComposer` scores a batch with every configured reward and returns the
unweighted value of each (``components``) with its weight; the weighted sum, with the
episodic-memory terms, is :func:`memrl.rewards.total.total_reward`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memrl.errors import RuntimeFault
from memrl.import_path import import_object
from memrl.rewards.batch import RewardBatch, RewardFn
from memrl.rewards.length import cosine_length_reward
from memrl.rewards.rule import (
    correctness_reward,
    integer_reward,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)


class RewardError(RuntimeFault, RuntimeError):
    """A reward function failed or returned values that are not one finite number per sample."""

    label = "reward failed"
    hint = "fix the reward function (or its kwargs in the config's rewards list)"


def _import_path(path: str, spec: str) -> Any:
    """The reward at ``"package.module:attr"``; ``spec`` is the configured name, quoted in errors."""
    return import_object(path, label=f"reward {spec!r}",
                         expected=f"a built-in reward name ({', '.join(BUILTIN_REWARDS)})")


class _LazyReward:
    """A built-in reward whose module is imported on first use (it may be optional)."""

    def __init__(self, path: str):
        self.path = path

    def resolve(self, spec: str) -> RewardFn:
        """The function itself; ``spec`` is the configured name, for error messages."""
        return _import_path(self.path, spec)

    def __call__(self, batch: RewardBatch, **kwargs: Any) -> Sequence[float]:
        return self.resolve(self.path)(batch, **kwargs)

    def __repr__(self) -> str:
        return f"_LazyReward({self.path!r})"


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward,
    "integer": integer_reward,
    "strict_format": strict_format_reward,
    "soft_format": soft_format_reward,
    "xmlcount": xmlcount_reward,
    "cosine_length": cosine_length_reward,
    "countdown_format": _LazyReward("memrl.rewards.countdown:countdown_format_reward"),
    "countdown_equation": _LazyReward("memrl.rewards.countdown:countdown_equation_reward"),
}


def resolve_reward(name: str) -> RewardFn:
    """The reward function for a built-in name or a ``"package.module:function"`` path."""
    fn: RewardFn | None = BUILTIN_REWARDS.get(name)
    if isinstance(fn, _LazyReward):
        fn = fn.resolve(name)
    if fn is None:
        fn = _import_path(name, name)
    if not callable(fn):
        raise ValueError(f"reward {name!r} is a {type(fn).__name__}, not a callable")
    return fn


@dataclass
class RewardSpec:
    """One configured reward: which function, its weight in the total, its keyword arguments.

    ``name`` labels its component (default: ``fn``); give one when the same function appears
    twice with different arguments. ``weight`` has no default here: the config's
    ``rewards[].weight`` and the method's plan (:func:`memrl.rewards.total.reward_plan`) set it.
    """

    fn: str
    weight: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.name is not None else self.fn


@dataclass
class RewardScores:
    """Rule rewards of one batch of ``N`` completions.

    ``components[name]``: float64 [N], unweighted values of one reward; ``weights[name]``: its
    weight wᵢ (applied by :func:`memrl.rewards.total.total_reward`).
    """

    components: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


def check_weight(name: str, weight: float) -> None:
    """ValueError naming reward ``name`` unless ``weight`` is a finite real number."""
    is_number = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
    if not is_number or not math.isfinite(weight):
        raise ValueError(f"reward {name!r}: weight must be a finite number, got {weight!r}")


def as_reward_values(name: str, values: Any, n: int) -> np.ndarray:
    """``values`` as a float64 [n] array; RewardError unless they are n finite numbers."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise RewardError(
            f"reward {name!r} returned a {type(values).__name__}, expected a list of {n} floats"
        )
    values = list(values)
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} samples")
    out = np.empty(n, dtype=np.float64)
    for i, value in enumerate(values):
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError
            out[i] = float(value)
        except (TypeError, ValueError):
            raise RewardError(
                f"reward {name!r} returned a non-number at index {i}: {value!r}"
            ) from None
        if not math.isfinite(out[i]):
            raise RewardError(f"reward {name!r} returned {float(out[i])} at index {i}")
    return out


def _single(batch: RewardBatch, i: int) -> RewardBatch:
    """Sample ``i`` of ``batch`` as a batch of one."""
    return RewardBatch(
        questions=[batch.questions[i]],
        completions=[batch.completions[i]],
        answers=[batch.answers[i]],
        completion_lengths=[batch.completion_lengths[i]],
        max_completion_length=batch.max_completion_length,
        metas=[batch.metas[i]] if batch.metas else (),
    )


def _clip(text: str, limit: int = 300) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} chars)"


class RewardComposer:
    """The configured rule rewards; functions are resolved and arguments checked upfront."""

    def __init__(self, specs: Sequence[RewardSpec]):
        self.specs = list(specs)
        self._fns: list[RewardFn] = []
        labels: set[str] = set()
        for spec in self.specs:
            if spec.label in labels:
                raise ValueError(
                    f"reward {spec.label!r} is configured twice; give each a distinct name"
                )
            labels.add(spec.label)
            check_weight(spec.label, spec.weight)
            fn = resolve_reward(spec.fn)
            try:
                inspect.signature(fn).bind(None, **spec.kwargs)
            except TypeError as exc:
                raise ValueError(
                    f"reward {spec.label!r}: arguments {spec.kwargs} do not fit {spec.fn}: {exc}"
                ) from exc
            except ValueError:  # no signature to inspect (some builtins): checked at call time
                pass
            self._fns.append(fn)

    def score(self, batch: RewardBatch) -> RewardScores:
        """Score ``batch`` with every configured reward (RewardError names the reward at fault)."""
        scores = RewardScores()
        for spec, fn in zip(self.specs, self._fns):
            scores.components[spec.label] = as_reward_values(spec.label, self._call(spec, fn, batch),
                                                             len(batch))
            scores.weights[spec.label] = float(spec.weight)
        return scores

    @staticmethod
    def _call(spec: RewardSpec, fn: RewardFn, batch: RewardBatch) -> Sequence[float]:
        try:
            return fn(batch, **spec.kwargs)
        except Exception as exc:
            error = exc
        for i in range(len(batch)):
            try:
                fn(_single(batch, i), **spec.kwargs)
            except Exception as sample_exc:  # noqa: BLE001 - re-raised with the sample named
                raise RewardError(
                    f"reward {spec.label!r} ({spec.fn}) raised {type(sample_exc).__name__}: "
                    f"{sample_exc} on sample {i}: question {_clip(batch.questions[i])}, "
                    f"completion {_clip(batch.completions[i])}"
                ) from sample_exc
        raise RewardError(
            f"reward {spec.label!r} ({spec.fn}) raised {type(error).__name__}: {error} on a "
            f"batch of {len(batch)} (no single sample raises alone)"
        ) from error
