"""The trainer/engine drift alarm: a silent mismatch between the learners' weights and the
rollout engines' is a warning, not only a metric.

``train/behaviour_logprob_gap`` is the mean |learner − sampler| log-prob per completion token
of a step. Healthy runs of other systems sit near 0.015 (kernels and precision differ); above
0.05 the engines sample from other weights than the learners hold (a broken sync). The first
step over ``rollout.max_behaviour_logprob_gap`` warns once, with each rollout worker's own gap
(from the prompt groups it generated); ``memrl report`` marks every such step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memrl.ledger import TrainedGroup


def group_workers(rollout_infos: Sequence[Mapping[str, Any]], num_generations: int) -> list[str]:
    """The rollout worker of each prompt group of a step, in order (the requests' infos are in
    request order and each covers ``num_completions / num_generations`` consecutive groups)."""
    return [str(info["worker_id"]) for info in rollout_infos
            for _ in range(int(info["num_completions"]) // num_generations)]


def worker_gaps(trained: Mapping[int, TrainedGroup], workers: Sequence[str]) -> dict[str, float]:
    """Mean |learner − sampler| log-prob per trained token of each worker's prompt groups."""
    sums: dict[str, list[float]] = {}
    for position, group in trained.items():
        if group.tokens and 0 <= position < len(workers):
            total = sums.setdefault(workers[position], [0.0, 0.0])
            total[0] += group.gap_sum
            total[1] += group.tokens
    return {worker: gap / tokens for worker, (gap, tokens) in sorted(sums.items())}


class DriftAlarm:
    """Fires once, at the first step whose gap exceeds ``bound`` (0: never)."""

    def __init__(self, bound: float, num_generations: int):
        self.bound = bound
        self.num_generations = num_generations
        self.fired_at: int | None = None

    def check(self, step: int, train_stats: Mapping[str, float], trained: Mapping[int, TrainedGroup],
              rollout_infos: Sequence[Mapping[str, Any]]) -> str | None:
        """The warning for ``step`` when it is the first over the bound, else None."""
        gap = float(train_stats.get("behaviour_logprob_gap", 0.0))
        if self.bound <= 0 or self.fired_at is not None or not gap > self.bound:
            return None
        self.fired_at = step
        gaps = worker_gaps(trained, group_workers(rollout_infos, self.num_generations))
        ranked = sorted(gaps.items(), key=lambda item: -item[1])
        over = [w for w, g in ranked if g > self.bound]
        workers = ", ".join(f"{w} {g:.4f}" for w, g in ranked) or "none reported"
        return (f"step {step}: train/behaviour_logprob_gap {gap:.4f} is above "
                f"rollout.max_behaviour_logprob_gap = {self.bound:g}: the rollout engines sample "
                f"from other weights than the learners hold (a broken weight sync, or an engine "
                f"whose numerics differ); per worker: {workers}"
                + (f"; over the bound: {', '.join(over)}" if over else "")
                + ". Warned once; `memrl report` marks every step over the bound.")
