"""The run's own evaluation: greedy accuracy of the current policy on held-out records, scored
with the task's correctness reward only (``memrl eval`` is the separate benchmark grader, see
:mod:`memrl.eval`). The rollout workers generate (``RolloutPool.generate_batches``); scoring
here is plain code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import concat_texts, score_step
from memrl.rewards.total import RewardPlan
from memrl.rollout.engine import SamplingSettings
from memrl.tasks.base import Task
from memrl.types import Record, RolloutBatch

LENIENT_TIMEOUT_S = 5.0  # per answer, as memrl eval's default


@dataclass
class GreedyEvalResult:
    """One greedy completion per held-out record, graded by the correctness reward."""

    accuracy: float
    num_correct: int
    num_total: int
    mean_length: float  # completion tokens
    answer_tag_rate: float  # share of completions that open an <answer> tag
    # The task's benchmark grade (memrl eval's): the final answer however it is written
    # (<answer> tag, \boxed{} or free text), so a gain in it is not the answer format alone.
    accuracy_lenient: float


def greedy_sampling(max_tokens: int) -> SamplingSettings:
    """One completion per prompt, seeded (the workers decode greedily when asked to)."""
    return SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=max_tokens,
                            num_generations=1, seed=0)


def score_greedy(batches: Sequence[RolloutBatch], records: Sequence[Record], plan: RewardPlan,
                 max_tokens: int, task: Task) -> GreedyEvalResult:
    """Grade one greedy completion per record with ``plan``'s correctness reward alone, and
    with ``task``'s benchmark grader (:meth:`Task.score_answers`) as ``accuracy_lenient``."""
    correctness_only = RewardPlan(
        specs=tuple(s for s in plan.specs if s.label == plan.correctness),
        correctness=plan.correctness,
        lambda_exploit=0.0,
        lambda_explore=0.0,
    )
    scores = score_step(batches, {r.id: r for r in records}, correctness_only,
                        RewardComposer(correctness_only.specs), max_tokens, memory=None)
    texts, ids, lengths = concat_texts(batches)
    by_id = {r.id: r for r in records}
    lenient = task.score_answers([by_id[i] for i in ids], texts, timeout_s=LENIENT_TIMEOUT_S)
    n_correct = int(scores.correct.sum())
    return GreedyEvalResult(accuracy=n_correct / len(records), num_correct=n_correct,
                            num_total=len(records), mean_length=float(lengths.mean()),
                            answer_tag_rate=sum("<answer>" in t for t in texts) / len(texts),
                            accuracy_lenient=sum(a.correct for a in lenient) / len(records))
