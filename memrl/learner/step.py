"""One data-parallel rank's share of a training step, derived without any collective.

Every rank receives all of a step's rollout chunks, so each derives the same shards, the
global token and sequence counts of the shared loss normaliser and the micro-batch count that
every rank must run (:func:`shard_step`). When the driver drops rows after scoring (groups
whose rewards do not vary), every rank recounts the kept rows of the whole step the same way
(:func:`step_inputs`). What a rank trained on, per prompt group, is counted from the rows
that really entered its loss (:func:`trained_groups`, for the prompt ledger). The Ray actor
(``actors/learner.py``) only calls these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from memrl.learner.batching import (
    concat_batches,
    micro_batches_needed,
    shard_bounds,
    slice_batch,
    take_rows,
)
from memrl.ledger import TrainedGroup
from memrl.types import RolloutBatch


@dataclass(frozen=True)
class StepShard:
    """Rank ``rank``'s rows ``rows`` of a step of ``global_seqs`` completions.

    ``passes`` is the forward/backward count every rank runs (the largest any shard needs);
    ``global_tokens`` the step's real completion tokens; ``lengths`` [N] every completion's
    real token count (to recount after rows are dropped).
    """

    batch: RolloutBatch
    rows: tuple[int, int]
    passes: int
    global_tokens: int
    global_seqs: int
    lengths: torch.Tensor


def shard_step(
    batches: list[RolloutBatch], rank: int, world_size: int, micro_batch_size: int
) -> StepShard:
    """This rank's shard of the step made of the rollout chunks ``batches`` (whole prompt
    groups per rank, see :func:`memrl.learner.batching.shard_bounds`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank = {rank}: must be in [0, {world_size})")
    full = concat_batches(list(batches))
    shards = shard_bounds(full.group_index, world_size)
    start, stop = shards[rank]
    return StepShard(
        batch=slice_batch(full, start, stop),
        rows=(start, stop),
        passes=max(micro_batches_needed(b - a, micro_batch_size) for a, b in shards),
        global_tokens=int(full.completion_mask.sum()),
        global_seqs=full.num_completions,
        lengths=full.completion_lengths,
    )


def step_inputs(
    shard: StepShard,
    advantages: torch.Tensor,
    keep: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
) -> tuple[RolloutBatch, torch.Tensor, dict[str, Any]]:
    """``(batch, advantages, keyword arguments)`` for ``PolicyTrainer.optimizer_step`` on this rank.

    ``advantages`` [N] and ``keep`` [N] (bool; rows to train on, None = all) cover the whole
    step; ``ref_logp`` covers this shard's rows. Dropped rows leave the loss and its
    normaliser on every rank.
    """
    n = shard.global_seqs
    if advantages.shape != (n,):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({n},)")
    if keep is not None and keep.shape != (n,):
        raise ValueError(f"keep has shape {tuple(keep.shape)}, expected ({n},)")
    start, stop = shard.rows
    batch, adv = shard.batch, advantages[start:stop]
    global_tokens, global_seqs = shard.global_tokens, shard.global_seqs
    if keep is not None:
        global_tokens = int(shard.lengths[keep].sum())
        global_seqs = int(keep.sum())
        rows = keep[start:stop]
        batch, adv = take_rows(batch, rows), adv[rows]
        ref_logp = None if ref_logp is None else ref_logp[rows]
    options = {"ref_logp": ref_logp, "global_tokens": global_tokens,
               "global_seqs": global_seqs, "num_micro_batches": shard.passes}
    return batch, adv, options


def completion_versions(batch: RolloutBatch) -> torch.Tensor:
    """[N] int64: the weight version that generated each completion, the oldest among its real
    tokens (``batch.weight_version`` for a completion without any)."""
    real = batch.completion_mask.bool()
    newest = torch.iinfo(torch.int64).max
    oldest = batch.token_versions.masked_fill(~real, newest).min(dim=1).values
    return torch.where(real.any(dim=1), oldest, torch.full_like(oldest, batch.weight_version))


def trained_groups(received: RolloutBatch, trained: RolloutBatch,
                   row_gaps: torch.Tensor) -> dict[int, TrainedGroup]:
    """Per prompt group (its position in the step): the completions this rank ``received`` (its
    shard) and those it ``trained`` on (the rows given to the optimizer step, after the keep
    mask), with each trained one's weight version and ``row_gaps`` [len(trained)] (Σ |learner
    − sampler| log-prob over a completion's real tokens)."""
    if row_gaps.shape != (trained.num_completions,):
        raise ValueError(f"row_gaps has shape {tuple(row_gaps.shape)}, expected "
                         f"({trained.num_completions},)")
    groups: dict[int, TrainedGroup] = {}
    for position, record_id in zip(received.group_index, received.record_ids):
        groups.setdefault(position, TrainedGroup(record_id)).received += 1
    versions = completion_versions(trained).tolist()
    lengths = trained.completion_lengths.tolist()
    gaps = row_gaps.tolist()
    for row, (position, record_id) in enumerate(zip(trained.group_index, trained.record_ids)):
        group = groups.setdefault(position, TrainedGroup(record_id))
        group.trained += 1
        group.versions.append(int(versions[row]))
        group.gap_sum += float(gaps[row])
        group.tokens += int(lengths[row])
    return groups
