"""The reward step as a Ray task: it reads the rollout batches from the object store next to
the learners' reference forward, and returns only the per-completion rewards to the driver."""

from __future__ import annotations

import ray

from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import MemoryScorer, StepScores, score_step
from memrl.rewards.total import RewardPlan
from memrl.types import Record, RolloutBatch


@ray.remote(num_cpus=0, max_retries=0)
def score_step_task(plan: RewardPlan, composer: RewardComposer, max_completion_length: int,
                    records: dict[str, Record], memory: MemoryScorer | None, step: int,
                    *batches: RolloutBatch) -> StepScores:
    """:func:`memrl.rewards.step_scores.score_step` on ``batches`` (passed as refs, resolved here)."""
    return score_step(list(batches), records, plan, composer, max_completion_length, memory, step)
