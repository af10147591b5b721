"""The reward step: rule rewards for a step's completions, then the episodic-memory rewards.

It runs as a Ray task next to the learners' reference forward, reading the rollout batches
from the object store; only the per-completion rewards (a few floats each) go back to the
driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from memrl.config import METHOD_REWARDS
from memrl.rewards.batch import RewardBatch
from memrl.rewards.registry import RewardComposer, RewardSpec
from memrl.types import Record, RolloutBatch
from memrl.verify import extract_xml_reasoning

# (questions, reasonings, correct, step) -> (exploit [N], explore [N]): the memory service.
MemoryScorer = Callable[[list[str], list[str], list[bool], int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class RewardPlan:
    """What the reward step computes, derived once from the config and the task."""

    specs: tuple[RewardSpec, ...]
    correctness: str  # component whose value > 0.5 marks a correct answer
    lambda_exploit: float = 0.0  # 0 disables the component
    lambda_explore: float = 0.0


@dataclass
class StepScores:
    """Rewards of one step, one entry per completion in rollout order."""

    total: np.ndarray  # [N] float64, weighted sum of every component
    components: dict[str, np.ndarray]  # name -> [N] float64, unweighted
    correct: np.ndarray  # [N] bool
    lengths: np.ndarray  # [N] int64, completion tokens
    memory_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def reward_plan(method: str, task_rule_rewards: Sequence[str], correctness: str, *,
                verifier: str, reference: bool, lambda_exploit: float, lambda_explore: float,
                user_specs: Sequence[RewardSpec] | None = None) -> RewardPlan:
    """The rewards of ``method`` (:data:`memrl.config.METHOD_REWARDS`: R1 = rule rewards;
    Cosine adds the length reward; Memory-R adds exploit; Memory-R+ adds exploit and explore;
    memoryr+cosine adds all three)."""
    parts = METHOD_REWARDS[method]
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
    )


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
    """Score every completion of a step: rule rewards, then memory rewards when enabled."""
    import time

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
    scores = composer.score(batch)
    correct = scores.components[plan.correctness] > 0.5
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
        if plan.lambda_exploit:
            scores.add_component("memory_exploit", exploit, plan.lambda_exploit)
        if plan.lambda_explore:
            scores.add_component("memory_explore", explore, plan.lambda_explore)
    return StepScores(total=scores.total, components=scores.components, correct=correct,
                      lengths=lengths, memory_seconds=memory_seconds)
