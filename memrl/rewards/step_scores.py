"""The reward step: rule rewards for a step's completions, then the episodic-memory rewards,
summed into R by :func:`memrl.rewards.total.total_reward` (the formula and its terms).

It runs as a Ray task next to the learners' reference forward, reading the rollout batches
from the object store; only the per-completion rewards (a few floats each) go back to the
driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from memrl.rewards.batch import RewardBatch
from memrl.rewards.registry import RewardComposer
from memrl.rewards.total import RewardPlan, total_reward
from memrl.tasks.base import is_direct_answer
from memrl.types import Record, RolloutBatch
from memrl.verify import extract_xml_reasoning

# (questions, reasonings, correct, step) -> (exploit [N], explore [N]): the memory service.
MemoryScorer = Callable[[list[str], list[str], list[bool], int], tuple[np.ndarray, np.ndarray]]


@dataclass
class StepScores:
    """Rewards of one step, one entry per completion in rollout order."""

    total: np.ndarray  # [N] float64, R = Σᵢ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore + b
    components: dict[str, np.ndarray]  # name -> [N] float64, unweighted
    weights: dict[str, float]  # name -> its weight in total (wᵢ, λ_s, λ_e)
    correct: np.ndarray  # [N] bool
    lengths: np.ndarray  # [N] int64, completion tokens
    direct: np.ndarray  # [N] bool, answered without working (memrl.tasks.base.is_direct_answer)
    memory_seconds: float = 0.0


def concat_texts(batches: Sequence[RolloutBatch]) -> tuple[list[str], list[str], np.ndarray]:
    """Completion texts, record ids and token lengths of several batches, in order."""
    texts: list[str] = []
    ids: list[str] = []
    lengths: list[np.ndarray] = []
    for b in batches:
        texts.extend(b.texts)
        ids.extend(b.record_ids)
        lengths.append(b.completion_lengths.numpy())
    return texts, ids, np.concatenate(lengths).astype(np.int64)


def score_step(batches: Sequence[RolloutBatch], records: dict[str, Record], plan: RewardPlan,
               composer: RewardComposer, max_completion_length: int,
               memory: MemoryScorer | None, step: int = 0) -> StepScores:
    """Score every completion of a step (``step``: 0-based): rule rewards, then memory rewards
    when the plan has a memory term, the random bonus when it has one, then their total."""
    texts, ids, lengths = concat_texts(batches)
    missing = sorted({i for i in ids if i not in records})
    if missing:
        raise KeyError(f"completions refer to unknown record ids {missing[:5]}")
    recs = [records[i] for i in ids]
    batch = RewardBatch(
        questions=[r.question for r in recs],
        completions=texts,
        answers=[r.answer for r in recs],
        completion_lengths=lengths.tolist(),
        max_completion_length=max_completion_length,
        metas=[r.meta for r in recs],
    )
    rule = composer.score(batch)
    correct = rule.components[plan.correctness] > 0.5
    exploit = explore = None
    memory_seconds = 0.0
    if memory is not None and (plan.lambda_exploit or plan.lambda_explore):
        start = time.perf_counter()
        # The memory stores the reasoning; without the tag the whole completion stands in (the
        # split semantics of extract_xml_reasoning). An empty <reasoning> block stays empty, as
        # in the official code: the windows are shared by all questions, so substituting the
        # whole text would shift every later memory reward.
        reasonings = [extract_xml_reasoning(t) for t in texts]
        exploit, explore = memory(list(batch.questions), reasonings, correct.tolist(), step)
        memory_seconds = time.perf_counter() - start
    bonus = plan.random_bonus.draw(len(texts), step) if plan.random_bonus is not None else None
    reward = total_reward(
        rule.components, rule.weights,
        exploit=exploit if plan.lambda_exploit else None, lambda_exploit=plan.lambda_exploit,
        explore=explore if plan.lambda_explore else None, lambda_explore=plan.lambda_explore,
        bonus=bonus,
    )
    direct = np.array([is_direct_answer(t) for t in texts], dtype=bool)
    return StepScores(total=reward.total, components=reward.components, weights=reward.weights,
                      correct=correct, lengths=lengths, direct=direct, memory_seconds=memory_seconds)
