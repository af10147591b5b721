"""What ``memrl eval`` evaluates and how: the settings, the task they build, its records."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memrl.errors import InputError
from memrl.eval.graders import GRADERS, VERIFIERS

if TYPE_CHECKING:
    from memrl.tasks.base import Task
    from memrl.types import Record
    from memrl.verify import CheckMode

ENGINES = ("auto", "hf", "vllm")
# Settings that have their own option; a --task-option may not set them a second time.
_OWN_OPTIONS = {
    "seed": "--seed",
    "path": "--data-path",
    "eval_path": "--data-path",
    "question_field": "--question-field",
    "answer_field": "--answer-field",
}


class EvalSettingsError(InputError, ValueError):
    """An evaluation option is invalid; the message names the option and value (``memrl eval``
    prints it and exits with code 2)."""


@dataclass
class EvalSettings:
    """What to evaluate and how to decode.

    ``limit``: the first N records of the split (None: all). Accuracy is greedy;
    ``temperature``/``top_p`` apply only to the ``pass_k`` samples drawn when ``pass_k > 1``.
    ``max_tokens``: completion tokens. ``batch_size``: completions per engine call.
    ``seed`` seeds the task's generator, the k-shot draw and the samples. ``engine``:
    ``"auto"`` (vLLM whenever a working build is installed, else transformers), ``"hf"`` or
    ``"vllm"``. ``data_path``: a local JSONL/Parquet file for the split (the task's ``path``
    for train, ``eval_path`` for test), with ``question_field``/``answer_field`` naming its
    fields. ``task_options``: more keyword arguments of the task's constructor (e.g. arith
    ``min_steps``). ``grader``: ``"extractive_match"`` or ``"correctness_reward"`` (see
    :mod:`memrl.eval.graders`); ``verifier`` is the correctness reward's answer check.
    """

    task: str
    split: str = "test"
    limit: int | None = None
    pass_k: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    num_shots: int = 0
    seed: int = 0
    batch_size: int = 64
    engine: str = "auto"
    data_path: str | None = None
    question_field: str | None = None
    answer_field: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 5.0  # per math-verify check
    grader: str = "extractive_match"
    verifier: CheckMode = "math"

    def __post_init__(self) -> None:
        from memrl.tasks import TASKS, resolve_task

        try:
            resolve_task(self.task)
        except ValueError as exc:
            raise EvalSettingsError(
                f"--task {self.task!r}: valid tasks are {', '.join(sorted(TASKS))} or an import "
                f"path 'package.module:TaskClass' ({exc})"
            ) from exc
        checks = [
            ("--limit", self.limit, self.limit is None or self.limit >= 1, ">= 1"),
            ("--pass-k", self.pass_k, self.pass_k >= 1, ">= 1"),
            ("--temperature", self.temperature, self.temperature > 0, "> 0"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("--max-tokens", self.max_tokens, self.max_tokens >= 1, ">= 1"),
            ("--num-shots", self.num_shots, self.num_shots >= 0, ">= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("timeout_s", self.timeout_s, self.timeout_s > 0, "> 0"),
        ]
        for option, value, ok, rule in checks:
            if not ok:
                raise EvalSettingsError(f"{option} = {value}: must be {rule}")
        for option, value, allowed in (("--engine", self.engine, ENGINES),
                                       ("--grader", self.grader, GRADERS),
                                       ("--verifier", self.verifier, VERIFIERS)):
            if value not in allowed:
                raise EvalSettingsError(f"{option} {value!r}: use one of {', '.join(allowed)}")
        for key in self.task_options:
            if key in _OWN_OPTIONS:
                raise EvalSettingsError(
                    f"--task-option {key}=...: set it with {_OWN_OPTIONS[key]} instead"
                )

    def decoding(self) -> dict[str, Any]:
        """The decoding settings recorded with a result."""
        return {
            "greedy": True,
            "pass_k": self.pass_k,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "num_shots": self.num_shots,
            "batch_size": self.batch_size,
        }


def build_eval_task(settings: EvalSettings) -> Task:
    """The task of ``settings``, reading ``data_path`` for its split when given."""
    from memrl.tasks import resolve_task

    task_cls = resolve_task(settings.task)
    kwargs: dict[str, Any] = {**settings.task_options, "seed": settings.seed}
    if settings.data_path is not None:
        kwargs["path" if settings.split == "train" else "eval_path"] = settings.data_path
    fields = {"question_field": settings.question_field, "answer_field": settings.answer_field}
    takes = inspect.signature(task_cls).parameters
    for key, value in fields.items():
        if value is None:
            continue
        if key not in takes:
            own = [name for name in takes if name.endswith("_field")]
            raise EvalSettingsError(
                f"--{key.replace('_', '-')}: {settings.task} files have no question/answer "
                f"fields; name theirs with --task-option " + " / ".join(f"{n}=..." for n in own)
            )
        kwargs[key] = value
    try:
        task = task_cls(**kwargs)
    except TypeError as exc:  # an option the task's constructor does not take
        raise EvalSettingsError(f"task {settings.task!r} rejected an option: {exc}") from exc
    except ValueError as exc:  # an option value the task refuses (the message names it)
        raise EvalSettingsError(str(exc)) from exc
    check_num_shots(task, settings)
    return task


def check_num_shots(task: Task, settings: EvalSettings) -> None:
    """Raise EvalSettingsError when the task has fewer exemplars than ``num_shots``."""
    if settings.num_shots > len(task.exemplars):
        raise EvalSettingsError(
            f"--num-shots {settings.num_shots}: task {task.name!r} has "
            f"{len(task.exemplars)} exemplars"
        )


def eval_records(task: Task, settings: EvalSettings) -> list[Record]:
    """The first ``settings.limit`` records (all when None) of the task's split."""
    try:
        records = task.dataset(settings.split)
    except ValueError as exc:  # unknown split, or a bad row of a local file (named)
        raise EvalSettingsError(str(exc)) from exc
    count = len(records) if settings.limit is None else min(settings.limit, len(records))
    if count == 0:
        raise EvalSettingsError(f"task {task.name!r}, split {settings.split!r} has no records")
    return list(records[:count])
