"""One step's metrics, assembled from what the step produced (torchtune's ``log_metrics`` habit:
the step computes, this module names and derives).

Pure functions of plain values, so the metric definitions are tested without Ray. The key
names and their meanings are owned by :mod:`memrl.metric_keys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from memrl.train.scoring import StepScores
from memrl.types import Record

# Phases timed by the step's StepClock, under the names their time/* metrics carry.
TIMED_PHASES = ("generate", "score", "train", "sync")


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


def _stat(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {f"{prefix}/mean": float(np.mean(values)), f"{prefix}/std": float(np.std(values))}


def weight_staleness(version: int, rollout_infos: Sequence[Mapping[str, Any]]) -> int:
    """How many versions older than the weights just replaced (``version - 1``) the step's
    oldest completion was generated with: 0 on-policy, 1 in async mode."""
    return version - 1 - min(int(info["weight_version"]) for info in rollout_infos)


def prompts_digest(records: Sequence[Record]) -> str:
    """A short digest of the step's prompt ids in order (resume tests compare it across runs)."""
    return hashlib.sha1(",".join(r.id for r in records).encode()).hexdigest()[:16]


def step_metrics(work: StepWork) -> dict[str, float | str]:
    """Rewards, accuracy, completion lengths, GRPO filtering, the learners' statistics, phase
    times and throughput of one step."""
    scores, stats, infos, d = work.scores, work.train_stats, work.rollout_infos, work.durations
    metrics: dict[str, float | str] = {}
    metrics.update(_stat("reward/total", scores.total))
    for name, values in scores.components.items():
        metrics.update(_stat(f"reward/{name}", values))
    metrics["accuracy"] = float(scores.correct.mean())
    metrics.update(_stat("completion/length", scores.lengths.astype(float)))
    metrics["completion/clipped_frac"] = float((scores.lengths >= work.max_completion_length).mean())
    metrics["grpo/zero_variance_groups_frac"] = float(1.0 - work.keep_groups.float().mean())
    metrics.update({f"train/{k}": v for k, v in stats.items()})

    for name in TIMED_PHASES:
        metrics[f"time/{name}"] = float(d.get(name, 0.0))
    metrics["time/memory"] = scores.memory_seconds
    metrics["time/reference"] = float(stats.get("reference_seconds", 0.0))
    # The workers' own weight loads happen inside generation but are part of the sync's cost.
    metrics["time/sync"] += max(float(i.get("sync_seconds", 0.0)) for i in infos)
    metrics["time/step"] = work.step_seconds

    tokens = sum(int(i["tokens"]) for i in infos)
    metrics["throughput/tokens_per_s"] = tokens / max(work.step_seconds, 1e-9)
    # Real (unpadded) prompt + completion tokens over the learners' own compute time.
    metrics["throughput/train_tokens_per_s"] = float(stats.get("sequence_tokens", 0.0)) / max(
        metrics["time/reference"] + float(stats.get("step_time_s", 0.0)), 1e-9)
    # The requests run in parallel, one per worker: the step's tokens over a request's mean time.
    mean_generate_s = sum(float(i["generate_seconds"]) for i in infos) / len(infos)
    metrics["throughput/generate_tokens_per_s"] = tokens / max(mean_generate_s, 1e-9)
    metrics["data/prompts_sha1"] = prompts_digest(work.records)
    return metrics
