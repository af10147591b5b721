"""The driver's side of a step's scoring: the reward task on the driver's node, retried when the
memory service dies mid-call (it restarts from its snapshot and the retry inserts this step's
entries), and a clear end when the restarted service cannot read its snapshot."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from memrl.actors.memory import SnapshotUnreachable
from memrl.actors.scoring import score_step_task
from memrl.errors import phase
from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import StepScores
from memrl.rewards.total import RewardPlan
from memrl.types import Record

log = logging.getLogger(__name__)

MEMORY_RETRIES = 3


class StepScorer:
    """Scores each step's completions: rule rewards, then the memory service (if any)."""

    def __init__(self, plan: RewardPlan, composer: RewardComposer, max_completion_length: int, memory: Any):
        self.plan, self.composer, self.memory = plan, composer, memory
        self.max_completion_length = max_completion_length
        self.memory_restarts = 0  # calls the memory service died in (health/memory_restarts)
        rewards = ", ".join(s.label for s in plan.specs)
        self.phase_name = f"scoring (rewards {rewards}" + (" and the memory service)" if memory else ")")

    def score(self, step: int, records: list[Record], batch_refs: list[ray.ObjectRef],
              timeout_s: float) -> StepScores:
        """Rewards of step ``step``'s completions (``batch_refs``: its rollout batches, read by
        the task from the object store, never by the driver); each attempt, and each wait for a
        restarted memory service, within ``timeout_s``."""
        memory_call = self.memory.score_and_insert if self.memory is not None else None
        by_id = {r.id: r for r in records}
        # On the driver's node: a spot node taking the task with it would fail the step.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        for attempt in range(1, MEMORY_RETRIES + 1):
            ref = score_step_task.options(scheduling_strategy=here).remote(
                self.plan, self.composer, self.max_completion_length, by_id, memory_call,
                step - 1, *batch_refs)
            try:
                with phase(self.phase_name, step=step, actor="the reward task (score_step_task)",
                           timeout_s=timeout_s):
                    return ray.get(ref, timeout=timeout_s)
            except RayTaskError as exc:
                # The task itself is fine; its call into a dying/restarting memory actor is not.
                if not isinstance(exc.cause, RayActorError) or attempt == MEMORY_RETRIES:
                    raise
                self.memory_restarts += 1
                log.warning("memory service failed while scoring step %d (%s); retrying",
                            step - 1, type(exc).__name__)
                self._wait_for_memory(step, timeout_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait_for_memory(self, step: int, timeout_s: float) -> None:
        """Block until the restarted memory service answers (calls fail fast while it restarts);
        a restart that cannot read its snapshot ends the run with the memory's own message."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.memory.wait_ready()
                return
            except RayActorError as exc:
                if SnapshotUnreachable.__name__ in str(exc):  # its __init__ refused to start empty
                    reason = str(exc).split(f"{SnapshotUnreachable.__name__}: ", 1)[-1].strip()
                    raise SnapshotUnreachable(reason, where=f"step {step}") from exc
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
