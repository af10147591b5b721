"""Cosine length reward (the paper's "Cosine" baseline).

With progress ``p`` and ``c = cos(p·π)``, a completion scores
``lo + 0.5·(hi − lo)·(1 + c)``: correct ones go from ``max_value_correct`` at p = 0 down to
``min_value_correct`` at p = 1; wrong ones from ``min_value_wrong`` up to ``max_value_wrong``.

- default: ``p = completion tokens / max_completion_length``, clipped to [0, 1];
- ``reference=True`` (the official code): ``p = characters / max_completion_length`` (a token
  budget), not clipped, so the reward oscillates with period ``2·max_completion_length``
  characters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from memrl.rewards.batch import RewardBatch
from memrl.rewards.rule import CHECK_TIMEOUT_S, DEFAULT_CHECK, answer_correctness
from memrl.verify import CheckMode


def cosine_scaled(
    progress: float,
    correct: bool,
    *,
    min_value_wrong: float,
    max_value_wrong: float,
    min_value_correct: float,
    max_value_correct: float,
) -> float:
    """Cosine-schedule reward of one completion at length progress ``progress`` (unitless)."""
    if correct:
        lo, hi = min_value_correct, max_value_correct
    else:
        # Swapped on purpose: a wrong answer is penalised most when it is short.
        lo, hi = max_value_wrong, min_value_wrong
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi))


def cosine_length_reward(
    batch: RewardBatch,
    *,
    correct: Sequence[bool] | None = None,
    reference: bool = False,
    mode: CheckMode = DEFAULT_CHECK,
    timeout_s: float = CHECK_TIMEOUT_S,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
) -> list[float]:
    """Cosine length reward of each completion (see the module docstring).

    ``correct`` gives each completion's correctness; when None it is computed with
    :func:`memrl.rewards.rule.answer_correctness` (``mode``, ``timeout_s``).
    """
    budget = batch.max_completion_length
    if budget <= 0:
        raise ValueError(f"max_completion_length must be positive, got {budget}")
    if correct is None:
        correct = answer_correctness(batch, mode=mode, timeout_s=timeout_s)
    elif len(correct) != len(batch):
        raise ValueError(f"correct has {len(correct)} entries, expected {len(batch)}")
    if reference:
        progress = [len(text) / budget for text in batch.completions]
    else:
        progress = [min(max(n / budget, 0.0), 1.0) for n in batch.completion_lengths]
    return [
        cosine_scaled(
            p,
            ok,
            min_value_wrong=min_value_wrong,
            max_value_wrong=max_value_wrong,
            min_value_correct=min_value_correct,
            max_value_correct=max_value_correct,
        )
        for p, ok in zip(progress, correct)
    ]
