"""The random bonus of method ``r1+random``: the control that separates "memory" from "any
dense bonus" (a random reward alone can lift a model; arXiv 2506.10947).

Completion ``i`` of 0-based training step ``s`` gets

    b_i ~ N(μ_s, σ_s²), drawn from a generator seeded by (run seed, s)                    (1)

and the total reward adds it with weight 1 (:func:`memrl.rewards.total.total_reward`). μ_s and
σ_s are either constants (``random_bonus.mean``/``std``) or, with ``random_bonus.match_run``, the
mean and standard deviation over step s+1's completions of a Memory-R+ run's intrinsic reward
λ_s·R̂_exploit + λ_e·R̂_explore (its ``reward/intrinsic/mean`` and ``/std`` lines), so the bonus
has the memory's scale, step by step, without its information. Seeding by (seed, step) makes a
run reproducible and a retried scoring call draw the same bonus.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memrl.errors import InputError
from memrl.metric_keys import REWARD_INTRINSIC_MEAN, REWARD_INTRINSIC_STD, STEP
from memrl.run_dir import METRICS_FILE


def draw_random_bonus(n: int, mean: float, std: float, *, seed: int, step: int) -> np.ndarray:
    """(1) for ``n`` completions of 0-based ``step``: [n] float64; the same (seed, step) gives
    the same draws."""
    if std < 0 or not math.isfinite(std) or not math.isfinite(mean):
        raise ValueError(f"random bonus: mean {mean} and std {std} must be finite, std >= 0")
    if step < 0:
        raise ValueError(f"random bonus: step {step} must be >= 0")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, step])
    return rng.normal(mean, std, size=n) if std > 0 else np.full(n, float(mean))


@dataclass(frozen=True)
class RandomBonus:
    """μ_s and σ_s of (1) for every step, and the run's seed."""

    seed: int
    means: tuple[float, ...]  # [steps] μ_s by 0-based step; one entry: the same every step
    stds: tuple[float, ...]  # [steps] σ_s, the same length as means

    @classmethod
    def constant(cls, mean: float, std: float, seed: int) -> RandomBonus:
        return cls(seed=seed, means=(float(mean),), stds=(float(std),))

    def draw(self, n: int, step: int) -> np.ndarray:
        """The bonus of ``n`` completions of 0-based ``step``."""
        i = 0 if len(self.means) == 1 else step
        if i >= len(self.means):
            raise ValueError(f"random bonus: no mean/std for step {step + 1} (matched {len(self.means)} steps)")
        return draw_random_bonus(n, self.means[i], self.stds[i], seed=self.seed, step=step)


def read_intrinsic_schedule(path: str | Path, steps: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-step mean and std of a Memory-R+ run's intrinsic reward, for training steps 1 ..
    ``steps`` (``metrics.jsonl``'s ``step``), indexed from 0.

    ``path``: the run directory or its ``metrics.jsonl``. The last line of a step that holds
    both keys counts (a resumed run may repeat a step).

    Raises:
        InputError: the file is missing or unreadable, or a step lacks the keys (the message
            names the file, the step and the keys).
    """
    file = Path(path)
    if file.is_dir():
        file = file / METRICS_FILE
    where = f"random_bonus.match_run: {file}"
    if not file.is_file():
        raise InputError(f"{file} does not exist", where=where,
                         hint="name a Memory-R+ run directory (method memoryr+) or its metrics.jsonl")
    found: dict[int, tuple[float, float]] = {}
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"line {number} is not JSON ({exc})", where=where) from None
        if REWARD_INTRINSIC_MEAN in record and REWARD_INTRINSIC_STD in record:
            found[int(record[STEP])] = (float(record[REWARD_INTRINSIC_MEAN]), float(record[REWARD_INTRINSIC_STD]))
    missing = [s for s in range(1, steps + 1) if s not in found]
    if missing:
        raise InputError(
            f"{file} has no {REWARD_INTRINSIC_MEAN} / {REWARD_INTRINSIC_STD} at step {missing[0]} "
            f"({len(missing)} of the {steps} steps this run needs lack them)", where=where,
            hint="match a Memory-R+ run (method memoryr+) of at least trainer.max_steps steps, "
                 "logged by a memrl that writes reward/intrinsic/*")
    return (tuple(found[s][0] for s in range(1, steps + 1)),
            tuple(found[s][1] for s in range(1, steps + 1)))
