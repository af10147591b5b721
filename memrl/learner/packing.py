"""Packed learner forwards: no compute on padding, one prompt forward per group.

A GRPO group is one prompt with ``G`` completions. The padded layout computes ``G`` copies of
the prompt plus every pad position; the packed layout lays out one row per run of completions
that share a prompt, ``[prompt, completion_1, completion_2, ...]`` with real tokens only, and a
4-D attention mask in which each completion sees the prompt and its own earlier tokens (a
shared-prefix tree). Each completion's position ids continue from the prompt's, so every
token sees exactly the context and positions it had in the padded layout: the log-probs, and
hence the loss and its gradient, are the same up to float summation order (the prompt's
gradient is the sum of its ``G`` copies' gradients).

The log-softmax over the vocabulary runs in float32 chunks of rows, only at the positions that
predict a completion token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Attention implementations that take an explicit 4-D mask ([B, 1, T, T]).
PACKABLE_ATTENTION = ("sdpa", "eager")


@dataclass(frozen=True)
class PackedInputs:
    """The packed layout of ``n`` completions (``K`` real completion tokens in all).

    ``input_ids``/``position_ids`` [B, T]; ``attention`` [B, 1, T, T] bool (True: query row may
    attend key column). ``source`` [K]: flat index into the ``B·T`` hidden states of the one
    predicting each completion token, ``targets`` [K] the token, and ``rows``/``cols`` [K]
    where it lies in the ``[n, L]`` completion tensors. ``row_lengths`` [B]: real positions
    of each packed row (the rest is padding).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention: torch.Tensor
    source: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    row_lengths: torch.Tensor

    @property
    def computed_tokens(self) -> int:
        """Token positions the forward computes (real and padding)."""
        return int(self.input_ids.numel())


def _segments(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of consecutive rows whose real prompt tokens are identical."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for i in range(1, prompt_ids.shape[0] + 1):
        same = i < prompt_ids.shape[0] and torch.equal(
            prompt_mask[i], prompt_mask[start]
        ) and torch.equal(prompt_ids[i], prompt_ids[start])
        if not same:
            bounds.append((start, i))
            start = i
    return bounds


def pack_completions(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int = 0,
) -> PackedInputs:
    """The packed layout (module docstring) of rows with left-padded prompts [n, P] and
    right-padded completions [n, L]. Packed rows are right-padded to the longest; a pad
    position attends only to itself (finite values, never read)."""
    n = completion_ids.shape[0]
    prompt_lens = prompt_mask.sum(dim=1)
    if n and int(prompt_lens.min()) < 1:
        row = int(prompt_lens.argmin())
        raise ValueError(f"row {row} has no real prompt token: nothing predicts its first token")
    ids_rows, pos_rows, seg_rows = [], [], []
    source, targets, rows, cols = [], [], [], []
    for start, stop in _segments(prompt_ids, prompt_mask):
        prompt = prompt_ids[start][prompt_mask[start].bool()]
        p = len(prompt)
        ids, pos, seg = [prompt], [torch.arange(p)], [torch.zeros(p, dtype=torch.long)]
        offset = p
        for i in range(start, stop):
            real = completion_mask[i].bool()
            tokens = completion_ids[i][real]
            k = len(tokens)
            ids.append(tokens)
            pos.append(torch.arange(p, p + k))
            seg.append(torch.full((k,), i - start + 1, dtype=torch.long))
            # Token j is predicted at the previous position: the prompt's last for j = 0.
            src = torch.arange(offset - 1, offset + k - 1)
            src[:1] = p - 1
            source.append((len(ids_rows), src))
            targets.append(tokens)
            rows.append(torch.full((k,), i, dtype=torch.long))
            cols.append(real.nonzero().flatten())
            offset += k
        ids_rows.append(torch.cat(ids))
        pos_rows.append(torch.cat(pos))
        seg_rows.append(torch.cat(seg))
    t = max((len(r) for r in ids_rows), default=1)
    b = len(ids_rows)
    input_ids = torch.full((b, t), pad_id, dtype=completion_ids.dtype)
    position_ids = torch.zeros((b, t), dtype=torch.long)
    # Pad positions get segment ids of their own (never 0, never a completion's).
    pad_base = n + 1
    segment = (torch.arange(t) + pad_base).repeat(b, 1)
    for r, (ids, pos, seg) in enumerate(zip(ids_rows, pos_rows, seg_rows)):
        input_ids[r, : len(ids)] = ids
        position_ids[r, : len(ids)] = pos
        segment[r, : len(ids)] = seg
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    same = (key == query) | ((key == 0) & (query < pad_base))
    attention = (causal & same)[:, None]
    flat = [r * t + s for r, s in source]
    cat = lambda xs, dtype: torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)  # noqa: E731
    return PackedInputs(
        input_ids=input_ids,
        position_ids=position_ids,
        attention=attention,
        source=cat(flat, torch.long),
        targets=cat(targets, completion_ids.dtype),
        rows=cat(rows, torch.long),
        cols=cat(cols, torch.long),
        row_lengths=torch.tensor([len(r) for r in ids_rows], dtype=torch.long),
    )


def packable_attention(model: torch.nn.Module) -> str | None:
    """The attention implementation of ``model`` (a Hugging Face causal LM) when it can run the
    packed forward, one that takes 4-D masks (flash-attention kernels take none); else None."""
    attention = getattr(model.config, "_attn_implementation", None)
    return attention if attention in PACKABLE_ATTENTION else None


def selected_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, chunk_tokens: int = 1024
) -> torch.Tensor:
    """[K] float32 log-probs of ``targets`` [K] under ``softmax(logits / temperature)``,
    ``logits`` [K, V] in any float dtype, reduced ``chunk_tokens`` rows at a time so that
    no float32 copy larger than one [chunk_tokens, V] block is made."""
    out = []
    for lo in range(0, logits.shape[0], chunk_tokens):
        scaled = logits[lo : lo + chunk_tokens].float() / temperature
        tok = targets[lo : lo + chunk_tokens]
        out.append(scaled.gather(-1, tok[:, None])[:, 0] - torch.logsumexp(scaled, dim=-1))
    return torch.cat(out) if out else logits.new_zeros(0, dtype=torch.float32)


def packed_completion_logprobs(
    model: torch.nn.Module,
    packed: PackedInputs,
    shape: tuple[int, int],
    temperature: float,
    device: torch.device | str,
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[n, L] float32 log-probs of the completion tokens (0 at padding) from one packed forward
    of ``model`` (a Hugging Face causal LM, or the DeepSpeed engine around one, whose
    attention is ``attn_implementation`` and compute dtype ``dtype``; see :func:`packable_attention`)."""
    mask = packed.attention.to(device)
    if attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    # The vocabulary projection only at the columns that predict a completion token: not at
    # the prompt's (nor at each completion's last token), a third of a packed row's positions.
    width = packed.input_ids.shape[1]
    source = packed.source.to(device)
    row, column = source // width, source % width
    columns = torch.unique(column)
    logits = model(
        input_ids=packed.input_ids.to(device),
        position_ids=packed.position_ids.to(device),
        attention_mask=mask,
        logits_to_keep=columns,
        use_cache=False,
    ).logits
    picked = logits[row, torch.searchsorted(columns, column)]
    logp = selected_logprobs(picked, packed.targets.to(device), temperature)
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    return out.index_put((packed.rows.to(device), packed.cols.to(device)), logp)
