"""The GRPO policy loss and its variants (GRPO, DAPO, Dr. GRPO), as pure torch functions.

For completion ``i`` with advantage ``A_i`` and each of its real tokens ``t`` (mask ``m_it = 1``)::

    ρ_it = exp(log π_θ(o_it) − log π_old(o_it))                       probability ratio
    s_it = −min(ρ_it·A_i, clip(ρ_it, 1 − ε_low, 1 + ε_high)·A_i)        clipped surrogate
    w_it = min(exp(log π_old(o_it) − log μ(o_it)), C)                   truncated IS weight
    k_it = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1         k3 estimate of KL(π_θ‖π_ref)
    ℓ_it = w_it·s_it + β·k_it

``π_old`` is the policy at the start of the optimiser step (with one update per batch
``π_old = π_θ`` numerically, so ``ρ = 1``, yet ``∇ρ = ∇log π_θ`` and the gradient is the policy
gradient ``−A·∇log π_θ``). ``μ`` is the rollout engine's policy that actually sampled the token:
in one-step-off asynchronous training it may hold older weights, and ``w`` corrects for that
(``w = 1`` when sampling is on-policy, so pass no weights then).

The loss ``J`` sums ``m_it·ℓ_it`` and divides by a normaliser ``n`` set by the aggregation:

    token_mean            J = Σ_i Σ_t m_it ℓ_it / n,   n = number of real tokens        (DAPO)
    seq_mean_token_mean   J = Σ_i (Σ_t m_it ℓ_it / Σ_t m_it) / n,   n = number of sequences
                                                                             (GRPO paper, TRL "grpo")
    dr_grpo               J = Σ_i Σ_t m_it ℓ_it / n,   n = number of sequences × L_max   (Dr. GRPO)

By default ``n`` counts the micro-batch passed in. To get the mean over the whole optimiser
step (all gradient-accumulation micro-batches and all data-parallel ranks, as DAPO prescribes),
pass ``normaliser=loss_normaliser(...)`` computed from the global counts; see that function for
the world-size and accumulation factors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from memrl.config import GRPOConfig, default_of

Aggregation = Literal["token_mean", "seq_mean_token_mean", "dr_grpo"]
_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


@dataclass(frozen=True)
class LossSettings:
    """Hyper-parameters of the GRPO loss.

    ``clip_low``/``clip_high`` are ε_low/ε_high (DAPO's clip-higher uses e.g. 0.2/0.28);
    ``beta`` is the KL coefficient (0 needs no reference model); ``max_completion_length``
    is L_max in tokens, required by ``dr_grpo``; ``is_cap`` is the truncation cap C of the
    importance weights for asynchronously sampled tokens (None: the learner applies no
    correction), passed by the learner to :func:`importance_weights`.
    """

    clip_low: float = default_of(GRPOConfig, "clip_low")
    clip_high: float = default_of(GRPOConfig, "clip_high")
    beta: float = default_of(GRPOConfig, "beta")
    aggregation: Aggregation = default_of(GRPOConfig, "loss_aggregation")
    max_completion_length: int | None = None
    is_cap: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"clip_low={self.clip_low} must be in [0, 1) (ratio floor 1 - clip_low)")
        if self.clip_high < 0.0:
            raise ValueError(f"clip_high={self.clip_high} must be >= 0")
        if self.beta < 0.0:
            raise ValueError(f"beta={self.beta} must be >= 0")
        if self.aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation={self.aggregation!r}: expected one of {_AGGREGATIONS}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length} must be >= 1")
        if self.aggregation == "dr_grpo" and self.max_completion_length is None:
            raise ValueError(
                "aggregation='dr_grpo' divides by num_sequences × max_completion_length: "
                "set max_completion_length (the rollout's max new tokens)"
            )
        if self.is_cap is not None and not self.is_cap > 0.0:
            raise ValueError(f"is_cap={self.is_cap} must be > 0 (or None for no correction)")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each token under ``softmax(logits / temperature)``.

    Args:
        logits: [N, L, V] any float dtype, position ``t`` already predicting ``tokens[:, t]``
            (i.e. the model's logits shifted by one and cut to the completion).
        tokens: [N, L] int64 token ids.
        temperature: the sampler's temperature, so the log-probs are those of the
            distribution the tokens were drawn from (as vLLM/HF sampling apply it).

    Returns:
        [N, L] float32 ``log p(token)``, differentiable w.r.t. ``logits``.

    One sequence at a time, ``logit[token] − logsumexp(logits)`` in float32: the peak extra
    memory is one [L, V] float32 row rather than a full [N, L, V] log-softmax.
    """
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [N, L, V] and tokens [N, L]; got logits {tuple(logits.shape)} "
            f"and tokens {tuple(tokens.shape)}"
        )
    if not temperature > 0.0:
        raise ValueError(f"temperature={temperature} must be > 0")
    vocab = logits.shape[2]
    if tokens.numel() > 0 and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"token ids must lie in [0, {vocab}); got min {int(tokens.min())}, max {int(tokens.max())}"
        )
    if logits.shape[0] == 0:
        return logits.new_zeros(tokens.shape, dtype=torch.float32)
    rows = []
    for row_logits, row_tokens in zip(logits, tokens):
        scaled = row_logits.float() / temperature  # [L, V]
        picked = scaled.gather(-1, row_tokens.unsqueeze(-1)).squeeze(-1)  # [L]
        rows.append(picked - torch.logsumexp(scaled, dim=-1))
    return torch.stack(rows)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ‖π_ref): ``exp(d) − d − 1`` with ``d = ref_logp − logp``.

    Shapes [N, L] in, [N, L] out; non-negative, 0 where the two log-probs agree.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def importance_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    cap: float,
) -> torch.Tensor:
    """Truncated importance weights ``min(exp(old_logp − behaviour_logp), cap)``, detached.

    Args:
        old_logp: [N, L] log π_old of the sampled tokens (the learner's policy at step start).
        behaviour_logp: [N, L] log μ, the rollout engine's log-probs when it sampled them
            (``RolloutBatch.behaviour_logprobs``; they must be taken at the same temperature).
        mask: [N, L] 1 for real completion tokens.
        cap: truncation C > 0 (``LossSettings.is_cap``; ``float("inf")`` for no truncation).

    Returns:
        [N, L] float weights, 0 at padding.
    """
    _check_same_shape(old_logp=old_logp, behaviour_logp=behaviour_logp, mask=mask)
    if not cap > 0.0:
        raise ValueError(f"cap={cap} must be > 0")
    real = mask.bool()
    # Padding log-probs may be junk (-inf, 0): zero the difference there so exp stays finite.
    log_w = (old_logp.detach() - behaviour_logp.detach()).masked_fill(~real, 0.0)
    return torch.exp(log_w).clamp(max=cap).masked_fill(~real, 0.0)


def loss_normaliser(
    settings: LossSettings,
    *,
    global_tokens: int,
    global_sequences: int,
    world_size: int = 1,
    accumulation_divisor: int = 1,
) -> float:
    """The ``normaliser`` to pass to :func:`grpo_loss` so the step optimises the global mean.

    Args:
        global_tokens: real completion tokens in the whole optimiser step (every micro-batch
            on every data-parallel rank, after any filtering of groups).
        global_sequences: completions in the whole optimiser step, after filtering.
        world_size: data-parallel ranks whose gradients the framework *averages* (DDP and
            DeepSpeed do); 1 if it sums them or runs on one process.
        accumulation_divisor: what the framework divides each micro-batch loss by before
            backward: DeepSpeed's ``engine.backward`` divides by
            ``gradient_accumulation_steps`` (``scale_wrt_gas=True``, its default); 1 for a
            plain ``loss.backward()``.

    Every micro-batch ``b`` on rank ``r`` returns ``S_rb / n`` (``S`` its masked sum). The
    framework yields ``(1/W)(1/D) Σ_r Σ_b ∇S_rb / n``; setting ``n = C / (W·D)`` makes this
    ``∇(Σ S / C)``, the gradient of the global loss with count ``C`` (tokens for
    ``token_mean``, sequences for ``seq_mean_token_mean``, sequences × L_max for ``dr_grpo``).
    The step's loss is then ``Σ stats["loss"] / (W·D)`` over all micro-batches and ranks.
    """
    if world_size < 1 or accumulation_divisor < 1:
        raise ValueError(
            f"world_size={world_size} and accumulation_divisor={accumulation_divisor} must be >= 1"
        )
    if settings.aggregation == "token_mean":
        count = global_tokens
    elif settings.aggregation == "seq_mean_token_mean":
        count = global_sequences
    else:
        assert settings.max_completion_length is not None  # LossSettings enforces it for dr_grpo
        count = global_sequences * settings.max_completion_length
    if count <= 0:
        raise ValueError(
            f"the step has global_tokens={global_tokens}, global_sequences={global_sequences}: "
            "nothing to train on (all groups filtered?) — skip the optimiser step"
        )
    return count / (world_size * accumulation_divisor)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    *,
    ref_logp: torch.Tensor | None = None,
    is_weights: torch.Tensor | None = None,
    normaliser: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO loss of one micro-batch (equations in the module docstring).

    Args:
        logp: [N, L] log π_θ of the completion tokens, with grad (:func:`token_logprobs`).
        old_logp: [N, L] log π_old at the start of the step (detached here).
        advantages: [N] one advantage per completion (:func:`group_advantages`).
        mask: [N, L] float/int/bool, 1 for real completion tokens.
        settings: clip range, β, aggregation.
        ref_logp: [N, L] log π_ref, required when ``settings.beta > 0``. If given with
            β = 0 the KL is still measured (``stats["kl"]``) but not added to the loss.
        is_weights: [N, L] from :func:`importance_weights`; multiplies the surrogate only.
        normaliser: ``n`` of the aggregation; default: this micro-batch's count (tokens,
            sequences, or sequences × L_max). Pass :func:`loss_normaliser` for the global mean.

    Returns:
        ``(loss, stats)``: scalar loss to backpropagate, and python floats computed over
        this micro-batch's real tokens: ``loss``, ``kl`` (mean k3; 0 without ``ref_logp``),
        ``clip_frac`` (fraction of tokens where the clipped branch binds: ρ > 1 + ε_high with
        A > 0, or ρ < 1 − ε_low with A < 0), ``ratio_mean``, ``adv_mean``, ``adv_std``
        (population std over the N completions), ``num_tokens`` (to weight the means when
        averaging micro-batches) and ``is_weight_mean`` when ``is_weights`` is given.
    """
    _check_same_shape(
        logp=logp, old_logp=old_logp, mask=mask, ref_logp=ref_logp, is_weights=is_weights
    )
    if logp.dim() != 2:
        raise ValueError(f"logp must be [N, L], got shape {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(
            f"advantages must be [N] = {tuple(logp.shape[:1])}, got shape {tuple(advantages.shape)}"
        )
    if settings.beta > 0.0 and ref_logp is None:
        raise ValueError(
            f"beta={settings.beta} > 0 adds a KL penalty, which needs ref_logp "
            "(set beta=0 to train without a reference model)"
        )
    if normaliser is not None and not normaliser > 0.0:
        raise ValueError(f"normaliser={normaliser} must be > 0")

    real = mask.bool()
    m = real.to(logp.dtype)
    tokens_per_seq = m.sum(dim=1)  # [N]
    if settings.aggregation == "dr_grpo" and logp.shape[0] > 0:
        assert settings.max_completion_length is not None  # LossSettings enforces it for dr_grpo
        longest = int(tokens_per_seq.max())
        if longest > settings.max_completion_length:
            raise ValueError(
                f"a completion has {longest} tokens, more than max_completion_length="
                f"{settings.max_completion_length} that dr_grpo divides by"
            )
    # Padding positions may hold junk log-probs (-inf, stale values); zero them before any
    # exp so neither the loss nor its gradient can turn NaN through 0 · inf.
    logp = logp.masked_fill(~real, 0.0)
    old_logp = old_logp.detach().masked_fill(~real, 0.0)
    adv = advantages.detach().to(logp.dtype).unsqueeze(1)  # [N, 1]

    # 1. Clipped surrogate.
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1.0 - settings.clip_low, 1.0 + settings.clip_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)

    # 2. Importance correction for tokens sampled by an older behaviour policy.
    if is_weights is not None:
        is_weights = is_weights.detach().to(logp.dtype).masked_fill(~real, 0.0)
        per_token = per_token * is_weights

    # 3. KL penalty towards the reference policy.
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, ref_logp.detach().to(logp.dtype).masked_fill(~real, 0.0))
        if settings.beta > 0.0:
            per_token = per_token + settings.beta * kl

    # 4. Aggregate over real tokens.
    masked_sum_per_seq = (per_token * m).sum(dim=1)  # [N]
    num_seqs = logp.shape[0]
    if settings.aggregation == "token_mean":
        n = normaliser if normaliser is not None else tokens_per_seq.sum().clamp(min=1.0)
        loss = masked_sum_per_seq.sum() / n
    elif settings.aggregation == "seq_mean_token_mean":
        n = normaliser if normaliser is not None else max(num_seqs, 1)
        loss = (masked_sum_per_seq / tokens_per_seq.clamp(min=1.0)).sum() / n
    else:  # dr_grpo
        assert settings.max_completion_length is not None  # LossSettings enforces it for dr_grpo
        n = normaliser if normaliser is not None else max(num_seqs, 1) * settings.max_completion_length
        loss = masked_sum_per_seq.sum() / n

    with torch.no_grad():
        num_tokens = m.sum()
        denom = num_tokens.clamp(min=1.0)

        def token_mean(x: torch.Tensor) -> float:
            return float((x * m).sum() / denom)

        binds = ((ratio > 1.0 + settings.clip_high) & (adv > 0)) | (
            (ratio < 1.0 - settings.clip_low) & (adv < 0)
        )
        stats = {
            "loss": float(loss.detach()),
            "kl": token_mean(kl) if kl is not None else 0.0,
            "clip_frac": token_mean(binds.to(m.dtype)),
            "ratio_mean": token_mean(ratio),
            "adv_mean": float(advantages.float().mean()) if num_seqs else 0.0,
            "adv_std": float(advantages.float().std(correction=0)) if num_seqs else 0.0,
            "num_tokens": float(num_tokens),
        }
        if is_weights is not None:
            stats["is_weight_mean"] = token_mean(is_weights)
    return loss, stats


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    """Raise a ValueError naming every shape when the given tensors differ in shape."""
    given = {name: t for name, t in tensors.items() if t is not None}
    shapes = {tuple(t.shape) for t in given.values()}
    if len(shapes) > 1:
        listing = ", ".join(f"{name} {tuple(t.shape)}" for name, t in given.items())
        raise ValueError(f"shape mismatch: {listing} must all be [N, L]")
