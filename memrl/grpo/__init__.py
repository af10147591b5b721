"""GRPO math as pure torch functions: group advantages and the clipped policy loss."""

from memrl.grpo.advantages import group_advantages, keep_mask_for_groups, zero_variance_groups
from memrl.grpo.loss import (
    LossSettings,
    grpo_loss,
    importance_weights,
    kl_k3,
    loss_normaliser,
    token_logprobs,
)

__all__ = [
    "LossSettings",
    "group_advantages",
    "grpo_loss",
    "importance_weights",
    "keep_mask_for_groups",
    "kl_k3",
    "loss_normaliser",
    "token_logprobs",
    "zero_variance_groups",
]
