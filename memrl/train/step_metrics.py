"""One step's metrics, assembled from what the step produced (torchtune's ``log_metrics`` habit:
the step computes, this module names and derives).

:func:`step_metrics` derives what the step did (rewards, lengths, the learners' statistics,
phase times, throughput); :func:`run_state_metrics` where the run stands after it (data
position, weights, the rollout pool's health, the memory service). Pure functions of plain
values and small views, so the definitions are tested without Ray. The key names and their
meanings are owned by :mod:`memrl.metric_keys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from memrl import metric_keys as k
from memrl.cluster.capacity import ClusterState
from memrl.errors import RuntimeFault
from memrl.rewards.step_scores import StepScores
from memrl.rewards.total import INTRINSIC, intrinsic_part
from memrl.types import Record

# The step's StepClock keys and the metric each one's duration is logged as (the clock's "sync"
# is time/sync's first part; the workers' own loads are added to it below).
TIMED_PHASES = {"generate": k.TIME_GENERATE, "score": k.TIME_SCORE, "train": k.TIME_TRAIN}


@dataclass(frozen=True)
class StepWork:
    """What one step did, as the driver saw it (no tensors of the batch itself)."""

    scores: StepScores
    keep_groups: torch.Tensor  # [G] bool: groups whose rewards were not all equal
    train_stats: Mapping[str, float]  # the learners' merged statistics (train/*)
    rollout_infos: Sequence[Mapping[str, Any]]  # one per generation request: tokens, weight_version ...
    durations: Mapping[str, float]  # seconds per timed phase (StepClock.durations)
    step_seconds: float  # the whole step, wall clock
    records: Sequence[Record]  # the step's prompts, in order
    max_completion_length: int


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def weight_staleness(version: int, rollout_infos: Sequence[Mapping[str, Any]], *, step: int,
                     max_staleness: int) -> int:
    """How many versions older than the weights just replaced (``version - 1``) the step's
    oldest completion was generated with: 0 on-policy, 1 in async mode. Past ``max_staleness``
    the rollout pool broke its bound: a fault, not a metric."""
    staleness = version - 1 - min(int(info["weight_version"]) for info in rollout_infos)
    if staleness > max_staleness:
        raise RuntimeFault(f"step {step} trained on weights {staleness} versions old, over "
                           f"rollout.max_staleness = {max_staleness}",
                           hint="a bug in the rollout pool's weight versions; please report it")
    return staleness


def prompts_digest(records: Sequence[Record]) -> str:
    """A short digest of the step's prompt ids in order (resume tests compare it across runs)."""
    return hashlib.sha1(",".join(r.id for r in records).encode()).hexdigest()[:16]


def step_metrics(work: StepWork) -> dict[str, float | str]:
    """Rewards, accuracy, completion lengths, GRPO filtering, the learners' statistics, phase
    times and throughput of one step."""
    scores, stats, infos, d = work.scores, work.train_stats, work.rollout_infos, work.durations
    metrics: dict[str, float | str] = {}
    metrics[k.REWARD_TOTAL_MEAN], metrics[k.REWARD_TOTAL_STD] = _mean_std(scores.total)
    for name, values in scores.components.items():
        mean_std = _mean_std(values)
        metrics[k.REWARD_MEAN.format(component=name)], metrics[k.REWARD_STD.format(component=name)] = mean_std
    intrinsic = intrinsic_part(scores.components, scores.weights)
    if intrinsic is not None:
        metrics[k.REWARD_INTRINSIC_MEAN], metrics[k.REWARD_INTRINSIC_STD] = _mean_std(intrinsic)
    # Every method: the share of worked answers is what RL must raise, with or without a memory.
    metrics.update(mechanism_metrics(scores))
    metrics[k.ACCURACY] = float(scores.correct.mean())
    metrics[k.COMPLETION_LENGTH_MEAN], metrics[k.COMPLETION_LENGTH_STD] = _mean_std(scores.lengths.astype(float))
    metrics[k.COMPLETION_CLIPPED_FRAC] = float((scores.lengths >= work.max_completion_length).mean())
    metrics[k.GRPO_ZERO_VARIANCE_GROUPS_FRAC] = float(1.0 - work.keep_groups.float().mean())
    metrics.update({f"train/{name}": value for name, value in stats.items()})

    for name, key in TIMED_PHASES.items():
        metrics[key] = float(d.get(name, 0.0))
    metrics[k.TIME_MEMORY] = scores.memory_seconds
    reference_s = metrics[k.TIME_REFERENCE] = float(stats.get("reference_seconds", 0.0))
    # The workers' own weight loads happen inside generation but are part of the sync's cost.
    metrics[k.TIME_SYNC] = float(d.get("sync", 0.0)) + max(float(i.get("sync_seconds", 0.0)) for i in infos)
    metrics[k.TIME_STEP] = work.step_seconds

    tokens = sum(int(i["tokens"]) for i in infos)
    metrics[k.THROUGHPUT_TOKENS_PER_S] = tokens / max(work.step_seconds, 1e-9)
    # Real (unpadded) prompt + completion tokens over the learners' own compute time.
    metrics[k.THROUGHPUT_TRAIN_TOKENS_PER_S] = float(stats.get("sequence_tokens", 0.0)) / max(
        reference_s + float(stats.get("step_time_s", 0.0)), 1e-9)
    # The requests run in parallel, one per worker: the step's tokens over a request's mean time.
    mean_generate_s = sum(float(i["generate_seconds"]) for i in infos) / len(infos)
    metrics[k.THROUGHPUT_GENERATE_TOKENS_PER_S] = tokens / max(mean_generate_s, 1e-9)
    metrics[k.DATA_PROMPTS_SHA1] = prompts_digest(work.records)
    return metrics


def mechanism_metrics(scores: StepScores) -> dict[str, float]:
    """Each intrinsic term's mean over the correct, incorrect, worked and direct completions
    (``mechanism/*``; a split with no completion, or a term the method lacks, is left out), and
    the share of worked ones."""
    splits = {k.MECHANISM_CORRECT: scores.correct, k.MECHANISM_INCORRECT: ~scores.correct,
              k.MECHANISM_WORKED: ~scores.direct, k.MECHANISM_DIRECT: scores.direct}
    metrics: dict[str, float] = {k.MECHANISM_WORKED_FRAC: float((~scores.direct).mean())}
    for name in INTRINSIC:
        if name not in scores.components:
            continue
        values = scores.components[name]  # [N] unweighted
        for key, mask in splits.items():
            if mask.any():
                metrics[key.format(component=name)] = float(values[mask].mean())
    return metrics


class PoolView(Protocol):
    """What the run-state metrics read of the rollout pool (:class:`memrl.actors.rollout_pool.RolloutPool`)."""

    events: Any  # PoolEvents: failure counters since the pool was made

    def __len__(self) -> int: ...
    def num_running(self) -> int: ...
    def cluster(self) -> ClusterState: ...


def run_state_metrics(pool: PoolView, *, consumed_prompts: int, version: int, publish_seconds: float,
                      staleness: int, memory_restarts: int, memory: Mapping[str, Any]) -> dict[str, Any]:
    """Where the run stands after a step: data position, weights, the pool's health, the memory
    service's own metrics (``memory/*``)."""
    events = pool.events
    metrics: dict[str, Any] = {
        k.DATA_CONSUMED_PROMPTS: consumed_prompts,
        k.WEIGHTS_VERSION: version,
        k.WEIGHTS_PUBLISH_SECONDS: publish_seconds,
        k.WEIGHTS_STALENESS: float(staleness),
        k.ROLLOUT_NUM_WORKERS: pool.num_running(),  # placed and answering
        k.ROLLOUT_NUM_WORKERS_REQUESTED: len(pool),  # config, control.yaml or memrl scale
        k.ROLLOUT_FAILURES: events.failures,
        k.ROLLOUT_REDISPATCHED: events.redispatched,
        k.ROLLOUT_DRAINING_NODES: len(pool.cluster().draining),  # now
        k.ROLLOUT_DRAINING_NODES_SEEN: events.draining_nodes_seen,
        k.ROLLOUT_PREEMPTED_WORKERS: events.preempted_workers,
        k.ROLLOUT_RESENT_GROUPS: events.resent_groups,
        k.ROLLOUT_LOST_WORK_S: round(events.lost_work_s, 3),
        k.HEALTH_MEMORY_RESTARTS: memory_restarts,
    }
    metrics.update({f"memory/{name}": value for name, value in memory.items()})
    return metrics
