"""What a step asks of its rollout workers: request chunks, their seeds and sampling, and which
worker gets the next one. Plain functions; the Ray side is :mod:`memrl.actors.rollout_pool`."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from memrl.config import GRPOConfig
from memrl.rollout.engine import SamplingSettings


@dataclass
class GenerationRequest:
    """One chunk of prompt groups sent to one worker."""

    index: int  # position of this chunk in the step, to keep results in prompt order
    prompts: list[str]
    record_ids: list[str]
    attempts: int = 0


def chunk_requests(prompts: Sequence[str], ids: Sequence[str], num_chunks: int) -> list[GenerationRequest]:
    """Split prompts into ``num_chunks`` contiguous, nearly equal requests (none empty)."""
    num_chunks = max(1, min(num_chunks, len(prompts)))
    bounds = np.linspace(0, len(prompts), num_chunks + 1).round().astype(int)
    return [
        GenerationRequest(index=i, prompts=list(prompts[a:b]), record_ids=list(ids[a:b]))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def request_seed(run_seed: int, step: int, chunk: int) -> int:
    """Sampling seed of chunk ``chunk`` of step ``step``: per (step, chunk), not per worker, so
    a chunk re-dispatched to another worker samples the same completions."""
    return (run_seed * 1_000_003 + step) * 97 + chunk


def training_sampling(grpo: GRPOConfig, seed: int | None = None) -> SamplingSettings:
    """The sampling a training step asks of its rollout workers: ``grpo``'s temperature, top-p,
    completion length and group size, with ``seed`` (see :func:`request_seed`)."""
    return SamplingSettings(temperature=grpo.temperature, top_p=grpo.top_p,
                            max_tokens=grpo.max_completion_length,
                            num_generations=grpo.num_generations, seed=seed)


def least_loaded(ready: Sequence[str], busy: Collection[str], failed: Collection[str]) -> str | None:
    """The worker that gets the next request: the first of the ``ready`` ones not ``busy``
    (a worker runs one request at a time: its engine batches all of that request's prompt
    groups); None when all are busy.

    Workers in ``failed`` (they failed in this step) get work only when no other worker is
    ready: a busy healthy worker is worth waiting for, the failed one may still be restarting.
    """
    usable = [w for w in ready if w not in failed] or list(ready)
    return next((w for w in usable if w not in busy), None)
