"""The total reward of a completion (docs/method.md, "Total reward"):

    R = Σᵢ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore + b                                    (1)

- rᵢ, wᵢ: the rule rewards (:mod:`memrl.rewards.rule`, :mod:`memrl.rewards.length`,
  :mod:`memrl.rewards.countdown` or a user's, computed by
  :class:`memrl.rewards.registry.RewardComposer`) and their weights (1 each, or the config's
  ``rewards`` list);
- R̂_exploit, R̂_explore: the episodic-memory rewards, min-max normalised over their windows
  (:class:`memrl.memory.rewarder.MemoryRewarder`), unweighted;
- λ_s, λ_e: ``memory.lambda_exploit`` and ``memory.lambda_explore``;
- b: the random bonus of ``r1+random`` (:mod:`memrl.rewards.random_bonus`), weight 1.

λ_s·R̂_exploit + λ_e·R̂_explore + b is the intrinsic part of R (:func:`intrinsic_part`,
logged as ``reward/intrinsic/*``).

Which terms a method has (:data:`memrl.config.METHOD_REWARDS`, :func:`reward_plan`):

==================  ==============================================
``r1``              Σᵢ wᵢ·rᵢ (the task's rule rewards)
``cosine``          rule rewards + the cosine length reward
``memoryr``         rule rewards + λ_s·R̂_exploit
``memoryr+``        rule rewards + λ_s·R̂_exploit + λ_e·R̂_explore
``memoryr+cosine``  all of the above
``explore``         rule rewards + λ_e·R̂_explore (Memory-R+ without exploit)
``r1+random``       rule rewards + b (no memory)
==================  ==============================================

This module is the one place where a weight multiplies a reward: the composer returns rᵢ
unweighted, the memory returns R̂ unweighted, :func:`total_reward` forms (1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from memrl.config import METHOD_REWARDS, Method
from memrl.rewards.random_bonus import RandomBonus
from memrl.rewards.registry import RewardSpec, as_reward_values, check_weight

# Component names of the memory terms (logged as reward/memory_exploit, reward/memory_explore)
# and of the random bonus (reward/random_bonus).
EXPLOIT = "memory_exploit"
EXPLORE = "memory_explore"
RANDOM_BONUS = "random_bonus"
INTRINSIC = (EXPLOIT, EXPLORE, RANDOM_BONUS)  # the terms that are not rule rewards


@dataclass(frozen=True)
class RewardPlan:
    """The parameters of (1) for one run: which terms, wᵢ (in ``specs``), λ_s and λ_e."""

    specs: tuple[RewardSpec, ...]  # the rule rewards rᵢ with their weights wᵢ
    correctness: str  # component whose value > 0.5 marks a correct answer
    lambda_exploit: float  # λ_s; 0: the method has no exploit term
    lambda_explore: float  # λ_e; 0: the method has no explore term
    random_bonus: RandomBonus | None = None  # b's schedule; None: the method has no bonus


@dataclass(frozen=True)
class TotalReward:
    """R of ``N`` completions and the terms it was summed from."""

    total: np.ndarray  # [N] float64, R of (1)
    components: dict[str, np.ndarray]  # name -> [N] float64, unweighted rᵢ / R̂
    weights: dict[str, float]  # name -> wᵢ, λ_s or λ_e


def reward_plan(method: Method, task_rule_rewards: Sequence[str], correctness: str, *,
                verifier: str, reference: bool, lambda_exploit: float, lambda_explore: float,
                user_specs: Sequence[RewardSpec] | None = None,
                random_bonus: RandomBonus | None = None) -> RewardPlan:
    """The terms of (1) for ``method``: the task's rule rewards (or ``user_specs``), the cosine
    length reward for the ``cosine`` methods, λ_s for the methods with exploit, λ_e for those
    with explore (the λ of a method without that term is 0), and ``random_bonus`` for
    ``r1+random`` (required there, refused elsewhere)."""
    parts = METHOD_REWARDS[method]
    if ("random" in parts) != (random_bonus is not None):
        raise ValueError(f"method {method}: a random bonus is {'required' if 'random' in parts else 'not used'}"
                         " (random_bonus.* is read by method r1+random only)")
    if user_specs is not None:
        specs = list(user_specs)
    else:
        specs = []
        for name in task_rule_rewards:
            kwargs = {"mode": verifier} if name == "correctness" else {}
            specs.append(RewardSpec(fn=name, weight=1.0, kwargs=kwargs))
        if "cosine" in parts:
            specs.append(RewardSpec(fn="cosine_length", weight=1.0,
                                    kwargs={"mode": verifier, "reference": reference}))
    labels = [s.label for s in specs]
    if correctness not in labels:
        raise ValueError(
            f"rewards: the task's correctness reward {correctness!r} must be one of the "
            f"configured rewards {labels} (it decides which memory a completion joins)"
        )
    return RewardPlan(
        specs=tuple(specs),
        correctness=correctness,
        lambda_exploit=lambda_exploit if "exploit" in parts else 0.0,
        lambda_explore=lambda_explore if "explore" in parts else 0.0,
        random_bonus=random_bonus,
    )


def total_reward(
    rule: Mapping[str, Sequence[float] | np.ndarray],
    weights: Mapping[str, float],
    *,
    exploit: Sequence[float] | np.ndarray | None = None,
    lambda_exploit: float | None = None,
    explore: Sequence[float] | np.ndarray | None = None,
    lambda_explore: float | None = None,
    bonus: Sequence[float] | np.ndarray | None = None,
) -> TotalReward:
    """R of (1) for ``N`` completions.

    Args:
        rule: rule-reward name -> [N] unweighted rᵢ (at least one).
        weights: rule-reward name -> wᵢ, the same names as ``rule``.
        exploit, explore: [N] R̂_exploit / R̂_explore, or None where the method has no such term.
        lambda_exploit, lambda_explore: λ_s / λ_e, required with their term.
        bonus: [N] b, or None where the method has no random bonus.
    Returns:
        R [N] float64, every component [N] float64 (unweighted) and its weight.
    Raises:
        ValueError: names that do not match, a memory term without its λ, no rule reward, a
            weight that is not a finite number.
        RewardError: a component that is not ``N`` finite numbers.
    """
    if not rule:
        raise ValueError("total reward: no rule reward (the correctness reward is always one)")
    if set(rule) != set(weights):
        raise ValueError(
            f"total reward: rule rewards {sorted(rule)} and weights {sorted(weights)} differ"
        )
    memory = [(EXPLOIT, exploit, lambda_exploit, "lambda_exploit"),
              (EXPLORE, explore, lambda_explore, "lambda_explore")]
    for name in INTRINSIC:
        if name in rule:
            raise ValueError(f"reward {name!r} is already the name of an intrinsic term; rename it")
    for name, values, lam, key in memory:
        if values is not None and lam is None:
            raise ValueError(f"total reward: {name} given without memory.{key}")
    n = len(next(iter(rule.values())))
    components: dict[str, np.ndarray] = {}
    used: dict[str, float] = {}
    for name, values in rule.items():
        check_weight(name, weights[name])
        components[name] = as_reward_values(name, values, n)  # [N]
        used[name] = float(weights[name])
    for name, values, lam, _ in memory:
        if values is not None:
            assert lam is not None  # a memory term without its λ was rejected above
            check_weight(name, lam)
            components[name] = as_reward_values(name, values, n)  # [N]
            used[name] = float(lam)
    if bonus is not None:
        components[RANDOM_BONUS] = as_reward_values(RANDOM_BONUS, bonus, n)  # [N]
        used[RANDOM_BONUS] = 1.0

    # 1. Σᵢ wᵢ·rᵢ over the rule rewards
    total = np.zeros(n, dtype=np.float64)
    for name in rule:
        total += used[name] * components[name]
    # 2. + λ_s·R̂_exploit
    if EXPLOIT in components:
        total += used[EXPLOIT] * components[EXPLOIT]
    # 3. + λ_e·R̂_explore
    if EXPLORE in components:
        total += used[EXPLORE] * components[EXPLORE]
    # 4. + b
    if RANDOM_BONUS in components:
        total += components[RANDOM_BONUS]
    return TotalReward(total=total, components=components, weights=used)


def intrinsic_part(components: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray | None:
    """λ_s·R̂_exploit + λ_e·R̂_explore + b of (1) per completion ([N] float64), from a
    :class:`TotalReward`'s components and weights; None when it has no intrinsic term."""
    terms = [weights[name] * np.asarray(components[name], dtype=np.float64)
             for name in INTRINSIC if name in components]
    return np.sum(terms, axis=0) if terms else None
