"""Pure helpers that cut a RolloutBatch for the learner: model inputs, micro-batches, DP shards.

Shapes follow ``memrl.types.RolloutBatch``: ``N`` completions, ``P`` prompt tokens (left
padded), ``L`` completion tokens (right padded).
"""

from __future__ import annotations

import math

import torch

from memrl.types import RolloutBatch


def policy_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each [N, P + L], for one causal-LM forward.

    Position ids count real tokens only (``cumsum(mask) − 1``), so a left-padded prompt gets
    the same positions as the unpadded one and the log-probs do not depend on the padding.
    Left padding gets position 0 and right padding repeats the last real position; both are
    masked out of attention and of the loss.
    """
    if prompt_ids.shape != prompt_mask.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError(
            f"ids and masks differ in shape: prompt {tuple(prompt_ids.shape)} vs "
            f"{tuple(prompt_mask.shape)}, completion {tuple(completion_ids.shape)} vs "
            f"{tuple(completion_mask.shape)}"
        )
    if prompt_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(
            f"{prompt_ids.shape[0]} prompts but {completion_ids.shape[0]} completions: "
            "each completion row needs its prompt row"
        )
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def micro_batch_bounds(num_rows: int, num_micro_batches: int) -> list[tuple[int, int]]:
    """Split ``num_rows`` rows into exactly ``num_micro_batches`` contiguous ``(start, stop)``.

    Sizes differ by at most one. When there are fewer rows than micro-batches the last ones are
    empty (``start == stop``): data-parallel ranks must run the same number of forward and
    backward passes (ZeRO's collectives are per pass), so a rank with fewer rows still runs a
    pass, contributing zero gradient.
    """
    if num_rows < 0 or num_micro_batches < 1:
        raise ValueError(
            f"num_rows={num_rows} must be >= 0 and num_micro_batches={num_micro_batches} >= 1"
        )
    base, extra = divmod(num_rows, num_micro_batches)
    bounds, start = [], 0
    for i in range(num_micro_batches):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def micro_batches_needed(num_rows: int, micro_batch_size: int) -> int:
    """Micro-batches of at most ``micro_batch_size`` rows needed for ``num_rows`` (at least 1)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1")
    return max(1, math.ceil(num_rows / micro_batch_size))


def group_bounds(group_index: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each prompt group: a run of equal consecutive ``group_index``."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(group_index) + 1):
        if i == len(group_index) or group_index[i] != group_index[start]:
            bounds.append((start, i))
            start = i
    return bounds


def shard_bounds(group_index: list[int], num_shards: int) -> list[tuple[int, int]]:
    """Contiguous row ranges, one per data-parallel rank, each holding whole prompt groups.

    Groups are dealt out in order, as evenly by count as possible (the first ranks get one
    more when they do not divide evenly). Raises ``ValueError`` when there are fewer groups
    than shards, since a rank with no rows cannot take part in the step.
    """
    groups = group_bounds(group_index)
    if len(groups) < num_shards:
        raise ValueError(
            f"the batch has {len(groups)} prompt groups but there are {num_shards} learner ranks: "
            "every rank needs at least one whole group (send more prompts per step or use "
            "fewer learners)"
        )
    split = micro_batch_bounds(len(groups), num_shards)
    return [(groups[first][0], groups[last - 1][1]) for first, last in split]


def slice_batch(batch: RolloutBatch, start: int, stop: int) -> RolloutBatch:
    """Rows ``start:stop`` of ``batch`` as a batch of its own.

    Tensors are copied, not viewed: pickling a view (as Ray does to send a shard) writes the
    whole underlying storage, so a view would ship the full batch to every rank.
    """
    if not 0 <= start <= stop <= batch.num_completions:
        raise ValueError(
            f"rows {start}:{stop} are outside the batch of {batch.num_completions} completions"
        )
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[start:stop].clone(),
        prompt_mask=batch.prompt_mask[start:stop].clone(),
        completion_ids=batch.completion_ids[start:stop].clone(),
        completion_mask=batch.completion_mask[start:stop].clone(),
        behaviour_logprobs=batch.behaviour_logprobs[start:stop].clone(),
        token_versions=batch.token_versions[start:stop].clone(),
        texts=list(batch.texts[start:stop]),
        group_index=list(batch.group_index[start:stop]),
        record_ids=list(batch.record_ids[start:stop]),
        weight_version=batch.weight_version,
        worker_id=batch.worker_id,
    )


def _pad_to(t: torch.Tensor, width: int, *, left: bool, value: float = 0) -> torch.Tensor:
    missing = width - t.shape[1]
    if missing == 0:
        return t
    pad = torch.full((t.shape[0], missing), value, dtype=t.dtype)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """One batch from several rollout chunks of a step, rows in the given order.

    Prompts are re-padded on the left and completions on the right to the widest chunk; the
    pad value is 0, which every mask excludes. Group indices are offset so that groups of
    different chunks stay distinct. ``weight_version`` is the newest of the chunks.
    """
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    if len(batches) == 1:
        return batches[0]
    p = max(b.prompt_ids.shape[1] for b in batches)
    length = max(b.completion_ids.shape[1] for b in batches)
    group_index: list[int] = []
    offset = 0
    for b in batches:
        group_index.extend(g + offset for g in b.group_index)
        offset += (max(b.group_index) + 1) if b.group_index else 0
    return RolloutBatch(
        prompt_ids=torch.cat([_pad_to(b.prompt_ids, p, left=True) for b in batches]),
        prompt_mask=torch.cat([_pad_to(b.prompt_mask, p, left=True) for b in batches]),
        completion_ids=torch.cat([_pad_to(b.completion_ids, length, left=False) for b in batches]),
        completion_mask=torch.cat([_pad_to(b.completion_mask, length, left=False) for b in batches]),
        behaviour_logprobs=torch.cat(
            [_pad_to(b.behaviour_logprobs, length, left=False) for b in batches]),
        token_versions=torch.cat([_pad_to(b.token_versions, length, left=False) for b in batches]),
        texts=[t for b in batches for t in b.texts],
        group_index=group_index,
        record_ids=[r for b in batches for r in b.record_ids],
        weight_version=max(b.weight_version for b in batches),
        worker_id=",".join(sorted({b.worker_id for b in batches})),
    )


def take_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The rows of ``batch`` selected by a boolean mask [N] or an index tensor, in order."""
    idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows.long()
    picked = idx.tolist()
    return RolloutBatch(
        prompt_ids=batch.prompt_ids[idx],
        prompt_mask=batch.prompt_mask[idx],
        completion_ids=batch.completion_ids[idx],
        completion_mask=batch.completion_mask[idx],
        behaviour_logprobs=batch.behaviour_logprobs[idx],
        token_versions=batch.token_versions[idx],
        texts=[batch.texts[i] for i in picked],
        group_index=[batch.group_index[i] for i in picked],
        record_ids=[batch.record_ids[i] for i in picked],
        weight_version=batch.weight_version,
        worker_id=batch.worker_id,
    )
