"""Group-relative advantages for GRPO.

Completions come in groups of ``G`` consecutive rows, one group per prompt (``N = B × G``,
the layout of :class:`memrl.types.RolloutBatch`). For completion ``i`` of group ``g``::

    GRPO     ("std"):   A_i = (r_i − mean_g(r)) / (std_g(r) + eps)
    Dr. GRPO ("none"):  A_i =  r_i − mean_g(r)

``std_g`` is the sample standard deviation with Bessel's correction (divide by ``G − 1``),
as TRL's GRPOTrainer computes it (``torch.std`` in TRL 0.14, the version behind the paper's
numbers; ``nanstd`` with the same correction in later versions), and ``eps = 1e-4`` is TRL's.
A group whose rewards are all equal gets ``A = 0`` under both scales (``0 / (0 + eps)``); such
groups carry no learning signal, and :func:`zero_variance_groups` with
:func:`keep_mask_for_groups` lets a learner drop them (DAPO's dynamic-sampling filter).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Check ``rewards`` [N] and return it as a float view [B, G]."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(
            f"group_size={group_size}: a group needs at least 2 completions to compare them "
            "(set grpo.num_generations >= 2)"
        )
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"rewards has {n} entries, not a multiple of group_size={group_size}: "
            "every prompt must have all of its completions in the batch"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel() > 0:
        i = int(bad[0])
        raise ValueError(f"rewards[{i}] = {float(rewards[i])} is not finite ({bad.numel()} such)")
    return rewards.view(n // group_size, group_size)


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: Literal["std", "none"] = "std",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantage of each completion relative to its group.

    Args:
        rewards: [N] total reward per completion, groups of ``group_size`` consecutive rows.
        group_size: ``G``, completions per prompt (>= 2).
        scale: ``"std"`` divides by the group's std + eps (GRPO); ``"none"`` only centres
            (Dr. GRPO, which removes the std's per-question weighting).
        eps: added to the std so flat groups give 0, not NaN.

    Returns:
        [N] advantages, float (the rewards' dtype if floating, else float32).
    """
    grouped = _grouped(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        advantages = centred / (grouped.std(dim=1, keepdim=True, correction=1) + eps)
    elif scale == "none":
        advantages = centred
    else:
        raise ValueError(f"scale={scale!r}: expected 'std' (GRPO) or 'none' (Dr. GRPO)")
    return advantages.reshape(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int, atol: float = 0.0) -> torch.Tensor:
    """[B] bool: True where every reward of the group lies within ``atol`` of the others.

    ``max − min <= atol``; with the default ``atol = 0`` the rewards must be exactly equal.
    """
    grouped = _grouped(rewards, group_size)
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return spread <= atol


def keep_mask_for_groups(group_keep: torch.Tensor, group_size: int) -> torch.Tensor:
    """Expand a per-group keep flag [B] bool to a per-completion mask [N] bool (N = B × G).

    Typical use, keeping only groups that carry a signal:
    ``keep_mask_for_groups(~zero_variance_groups(r, G), G)``.
    """
    if group_keep.dim() != 1 or group_keep.dtype != torch.bool:
        raise ValueError(
            f"group_keep must be a 1-D bool tensor [B], got dtype {group_keep.dtype} "
            f"and shape {tuple(group_keep.shape)}"
        )
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    return group_keep.repeat_interleave(group_size)


class StepAdvantages(NamedTuple):
    """A step's advantages and which rows carry a training signal."""

    advantages: torch.Tensor  # [N] float
    signal_groups: torch.Tensor  # [B] bool: groups whose rewards are not all equal
    keep: torch.Tensor | None  # [N] bool: rows to train on; None = all of them


def step_advantages(rewards: torch.Tensor, group_size: int, *, scale: Literal["std", "none"],
                    filter_zero_variance: bool) -> StepAdvantages:
    """:func:`group_advantages` of a step's rewards [N], and with ``filter_zero_variance`` the
    rows of groups whose rewards differ (a flat group's advantages are all 0: it teaches nothing).
    When every group is flat, every row is kept: the step then only moves the KL term."""
    advantages = group_advantages(rewards, group_size, scale=scale)
    signal = ~zero_variance_groups(rewards, group_size)
    keep = keep_mask_for_groups(signal, group_size) if filter_zero_variance and bool(signal.any()) else None
    return StepAdvantages(advantages, signal, keep)
