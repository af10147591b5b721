"""GRPO math checked against hand-computed numbers on tiny tensors."""

import math

import pytest
import torch

from memrl.grpo import (
    LossSettings,
    group_advantages,
    grpo_loss,
    importance_weights,
    keep_mask_for_groups,
    kl_k3,
    loss_normaliser,
    token_logprobs,
    zero_variance_groups,
)

K3_HALF_VS_QUARTER = math.log(2.0) - 0.5  # k3 for p = 1/2, p_ref = 1/4: 0.5 - ln 0.5 - 1


# ---------------------------------------------------------------- advantages


def test_group_advantages_std_uses_bessel_and_flat_group_is_zero() -> None:
    rewards = torch.tensor([3.0, 1.0, 2.0, 2.0])  # groups [3, 1] and [2, 2]
    adv = group_advantages(rewards, 2)
    # Group [3, 1]: mean 2, Bessel std sqrt((1 + 1) / 1) = sqrt(2) (population std would be 1).
    a = 1.0 / (math.sqrt(2.0) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, 0.0, 0.0]))
    assert abs(a - 0.70706) < 1e-5


def test_group_advantages_group_of_four() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    # mean 0.5, Bessel variance (4 × 0.25) / 3 = 1/3.
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-4)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    assert not torch.isnan(group_advantages(rewards, 4)).any()


def test_group_advantages_none_only_centres() -> None:
    rewards = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0, 1.5])
    adv = group_advantages(rewards, 3, scale="none")
    # Groups [3, 1, 2] (mean 2) and [2, 0, 1.5] (mean 3.5 / 3).
    m2 = 3.5 / 3.0
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 2.0 - m2, -m2, 1.5 - m2]))


def test_group_advantages_integer_rewards_become_float() -> None:
    adv = group_advantages(torch.tensor([1, 0]), 2, scale="none")
    assert adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]))


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(6), 4, "not a multiple of group_size=4"),
        (torch.zeros(6), 1, "group_size=1"),
        (torch.zeros(2, 2), 2, r"1-D \[N\]"),
        (torch.tensor([0.0, float("nan")]), 2, r"rewards\[1\]"),
    ],
)
def test_group_advantages_rejects_bad_input(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)


def test_group_advantages_rejects_unknown_scale() -> None:
    with pytest.raises(ValueError, match="scale='batch'"):
        group_advantages(torch.zeros(4), 2, scale="batch")  # type: ignore[arg-type]


def test_zero_variance_groups() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, 2.0])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]
    near = torch.tensor([1.0, 1.05])
    assert zero_variance_groups(near, 2).tolist() == [False]
    assert zero_variance_groups(near, 2, atol=0.1).tolist() == [True]
    with pytest.raises(ValueError, match="not a multiple"):
        zero_variance_groups(torch.zeros(3), 2)


def test_keep_mask_for_groups() -> None:
    keep = keep_mask_for_groups(torch.tensor([True, False]), 3)
    assert keep.tolist() == [True, True, True, False, False, False]
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert keep_mask_for_groups(~zero_variance_groups(rewards, 2), 2).tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="bool"):
        keep_mask_for_groups(torch.tensor([1, 0]), 2)


# ---------------------------------------------------------------- token log-probs and KL


def test_token_logprobs_hand_value_and_temperature() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # [1, 2, 2]
    tokens = torch.tensor([[1, 0]])
    expected = torch.tensor([[math.log(0.75), math.log(0.25)]])
    torch.testing.assert_close(token_logprobs(logits, tokens), expected)
    # T = 2 halves the logits: p(1) = sqrt(3) / (1 + sqrt(3)).
    p1 = math.sqrt(3.0) / (1.0 + math.sqrt(3.0))
    torch.testing.assert_close(
        token_logprobs(logits, tokens, temperature=2.0), torch.tensor([[math.log(p1), math.log(1.0 - p1)]])
    )


def test_token_logprobs_matches_log_softmax_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3), generator=gen)
    ours = token_logprobs(logits, tokens, temperature=0.9)
    ref = torch.log_softmax(logits / 0.9, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_token_logprobs_bf16_returns_float32() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[1]]))
    assert out.dtype == torch.float32
    assert abs(float(out) - math.log(0.75)) < 1e-2


def test_token_logprobs_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 4\)"):
        token_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max 5"):
        token_logprobs(torch.zeros(1, 1, 5), torch.tensor([[5]]))
    with pytest.raises(ValueError, match="temperature=0"):
        token_logprobs(torch.zeros(1, 1, 5), torch.tensor([[0]]), temperature=0.0)


def test_kl_k3_values() -> None:
    logp = torch.tensor([[math.log(0.5), -2.0]])
    ref = torch.tensor([[math.log(0.25), -2.0]])
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([[K3_HALF_VS_QUARTER, 0.0]]))
    assert abs(K3_HALF_VS_QUARTER - 0.193147) < 1e-6


# ---------------------------------------------------------------- loss at ratio = 1

MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])  # 9 real tokens
ADV = torch.tensor([1.0, -1.0, 2.0, 0.5])
# Masked sum of -A over real tokens: -(3·1 + 2·(-1) + 1·2 + 3·0.5) = -4.5.


def _on_policy_logp() -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.full((4, 3), -1.3, requires_grad=True)
    return logp, logp.detach().clone()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (LossSettings(beta=0.0), -4.5 / 9),
        (LossSettings(beta=0.0, aggregation="seq_mean_token_mean"), -(1 - 1 + 2 + 0.5) / 4),
        (LossSettings(beta=0.0, aggregation="dr_grpo", max_completion_length=4), -4.5 / (4 * 4)),
    ],
)
def test_loss_at_ratio_one_for_each_aggregation(settings: LossSettings, expected: float) -> None:
    logp, old = _on_policy_logp()
    loss, stats = grpo_loss(logp, old, ADV, MASK, settings)
    assert abs(loss.item() - expected) < 1e-6
    assert stats["loss"] == pytest.approx(expected, abs=1e-6)
    assert stats["clip_frac"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["kl"] == 0.0
    assert stats["num_tokens"] == 9.0
    assert stats["adv_mean"] == pytest.approx(0.625)
    assert stats["adv_std"] == pytest.approx(math.sqrt(4.6875 / 4))
    assert "is_weight_mean" not in stats


def test_token_mean_gradient_is_minus_advantage_over_tokens() -> None:
    logp, old = _on_policy_logp()
    loss, _ = grpo_loss(logp, old, ADV, MASK, LossSettings(beta=0.0))
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, -ADV.unsqueeze(1) * MASK / 9.0)


def test_padding_junk_gives_finite_loss_and_zero_gradient() -> None:
    logp, old = _on_policy_logp()
    junk = torch.where(MASK.bool(), logp.detach(), torch.tensor(float("-inf")))
    logp_junk = junk.clone().requires_grad_(True)
    old_junk = torch.where(MASK.bool(), old, torch.tensor(50.0))
    ref_junk = torch.where(MASK.bool(), old, torch.tensor(float("-inf")))
    loss, stats = grpo_loss(
        logp_junk, old_junk, ADV, MASK, LossSettings(beta=0.1), ref_logp=ref_junk
    )
    assert abs(loss.item() - (-4.5 / 9)) < 1e-6
    assert stats["kl"] == 0.0
    (grad,) = torch.autograd.grad(loss, logp_junk)
    torch.testing.assert_close(grad, -ADV.unsqueeze(1) * MASK / 9.0)


# ---------------------------------------------------------------- clipping

# ε_low = 0.2, ε_high = 0.28 (DAPO clip-higher): band [0.8, 1.28]. Per token: ratio, then loss:
#   row 0, A = +1:   1.5 -> clipped above, binds: -1.28      1.1 -> -1.1
#   row 1, A = -1:   0.5 -> clipped below, binds: +0.8       1.5 -> +1.5 (A < 0: unclipped is worse)
#   row 2, A = +2:   0.5 -> -1.0 (A > 0: unclipped is worse) 1.0 -> -2.0
#   row 3, A = -0.5: 0.7 -> clipped below, binds: +0.4       2.0 -> +1.0
# Sum -1.68 over 8 tokens; 3 tokens bind.
CLIP_RATIOS = torch.tensor([[1.5, 1.1], [0.5, 1.5], [0.5, 1.0], [0.7, 2.0]])
CLIP_ADV = torch.tensor([1.0, -1.0, 2.0, -0.5])
CLIP = LossSettings(clip_low=0.2, clip_high=0.28, beta=0.0)


def _clip_case() -> tuple[torch.Tensor, torch.Tensor]:
    old = torch.full((4, 2), -1.0)
    logp = (old + CLIP_RATIOS.log()).requires_grad_(True)
    return logp, old


def test_clipping_binds_in_both_directions() -> None:
    logp, old = _clip_case()
    loss, stats = grpo_loss(logp, old, CLIP_ADV, torch.ones(4, 2), CLIP)
    assert abs(loss.item() - (-1.68 / 8)) < 1e-6
    assert stats["clip_frac"] == pytest.approx(3 / 8)
    assert stats["ratio_mean"] == pytest.approx(8.8 / 8)


def test_clipped_tokens_get_no_gradient() -> None:
    logp, old = _clip_case()
    loss, _ = grpo_loss(logp, old, CLIP_ADV, torch.ones(4, 2), CLIP)
    (grad,) = torch.autograd.grad(loss, logp)
    # Unclipped tokens: d(-ratio·A)/d logp = -A·ratio; divided by 8 tokens.
    expected = torch.tensor([[0.0, -1.1], [0.0, 1.5], [-1.0, -2.0], [0.0, 1.0]]) / 8
    torch.testing.assert_close(grad, expected)


def test_symmetric_clip_changes_the_upper_bound() -> None:
    logp, old = _clip_case()
    loss, _ = grpo_loss(logp, old, CLIP_ADV, torch.ones(4, 2), LossSettings(beta=0.0))
    # Only row 0 token 0 changes: -1.2 instead of -1.28.
    assert abs(loss.item() - (-1.60 / 8)) < 1e-6


# ---------------------------------------------------------------- KL term


def test_beta_adds_k3_penalty_and_its_gradient() -> None:
    logp = torch.full((2, 2), math.log(0.5), requires_grad=True)
    ref = torch.full((2, 2), math.log(0.25))
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = grpo_loss(
        logp, logp.detach(), torch.zeros(2), mask, LossSettings(beta=0.1), ref_logp=ref
    )
    assert abs(loss.item() - 0.1 * K3_HALF_VS_QUARTER) < 1e-6
    assert stats["kl"] == pytest.approx(K3_HALF_VS_QUARTER)
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - 1/2.
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, 0.1 * 0.5 * mask / 3.0)


def test_beta_zero_measures_kl_without_adding_it() -> None:
    logp = torch.full((1, 2), math.log(0.5))
    ref = torch.full((1, 2), math.log(0.25))
    loss, stats = grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), LossSettings(beta=0.0), ref_logp=ref)
    assert abs(loss.item() - (-1.0)) < 1e-6
    assert stats["kl"] == pytest.approx(K3_HALF_VS_QUARTER)


def test_beta_without_reference_is_an_error() -> None:
    logp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="beta=0.04"):
        grpo_loss(logp, logp, torch.ones(1), torch.ones(1, 2), LossSettings())


# ---------------------------------------------------------------- importance weights


def test_importance_weights_truncate_and_zero_padding() -> None:
    old = torch.zeros(1, 4, requires_grad=True)
    behaviour = torch.tensor([[-math.log(2.0), math.log(2.0), -math.log(10.0), float("-inf")]])
    mask = torch.tensor([[1, 1, 1, 0]])
    w = importance_weights(old, behaviour, mask, cap=3.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 3.0, 0.0]]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap=0"):
        importance_weights(old, behaviour, mask, cap=0.0)


def test_importance_weights_scale_the_surrogate_only() -> None:
    logp = torch.full((1, 3), math.log(0.5))
    mask = torch.tensor([[1, 1, 0]])
    w = torch.tensor([[2.0, 0.5, 7.0]])  # the 7 sits on padding and must not count
    loss, stats = grpo_loss(logp, logp, torch.ones(1), mask, LossSettings(beta=0.0), is_weights=w)
    assert abs(loss.item() - (-(2.0 + 0.5) / 2)) < 1e-6
    assert stats["is_weight_mean"] == pytest.approx(1.25)
    ref = torch.full((1, 3), math.log(0.25))
    loss_kl, _ = grpo_loss(
        logp, logp, torch.ones(1), mask, LossSettings(beta=0.1), ref_logp=ref, is_weights=w
    )
    assert abs(loss_kl.item() - (-1.25 + 0.1 * K3_HALF_VS_QUARTER)) < 1e-6


# ---------------------------------------------------------------- global normaliser


def test_explicit_normaliser_replaces_the_local_count() -> None:
    logp, old = _on_policy_logp()
    loss, _ = grpo_loss(logp, old, ADV, MASK, LossSettings(beta=0.0), normaliser=18.0)
    assert abs(loss.item() - (-4.5 / 18)) < 1e-6


def test_loss_normaliser_counts() -> None:
    kw = {"global_tokens": 9, "global_sequences": 4, "world_size": 2, "accumulation_divisor": 4}
    assert loss_normaliser(LossSettings(), **kw) == 9 / 8
    assert loss_normaliser(LossSettings(aggregation="seq_mean_token_mean"), **kw) == 4 / 8
    dr = LossSettings(aggregation="dr_grpo", max_completion_length=4)
    assert loss_normaliser(dr, **kw) == 16 / 8
    with pytest.raises(ValueError, match="skip the optimiser step"):
        loss_normaliser(LossSettings(), global_tokens=0, global_sequences=0)


@pytest.mark.parametrize(
    "settings",
    [
        LossSettings(beta=0.0),
        LossSettings(beta=0.0, aggregation="seq_mean_token_mean"),
        LossSettings(beta=0.0, aggregation="dr_grpo", max_completion_length=3),
    ],
)
def test_micro_batches_over_ranks_reproduce_the_full_batch_gradient(settings: LossSettings) -> None:
    """2 ranks × 2 micro-batches of one sequence; gradients averaged over ranks, each
    micro-batch loss divided by the accumulation steps (DeepSpeed's defaults)."""
    gen = torch.Generator().manual_seed(1)
    logp = (-torch.rand(4, 3, generator=gen)).requires_grad_(True)
    old = logp.detach() + 0.05 * torch.randn(4, 3, generator=gen)
    full, _ = grpo_loss(logp, old, ADV, MASK, settings)
    (g_full,) = torch.autograd.grad(full, logp)

    world, accum = 2, 2
    n = loss_normaliser(
        settings, global_tokens=9, global_sequences=4, world_size=world, accumulation_divisor=accum
    )
    g_sum = torch.zeros_like(logp)
    for i in range(4):
        s = slice(i, i + 1)
        part, _ = grpo_loss(logp[s], old[s], ADV[s], MASK[s], settings, normaliser=n)
        (g,) = torch.autograd.grad(part / accum, logp)
        g_sum += g / world
    torch.testing.assert_close(g_sum, g_full)


# ---------------------------------------------------------------- settings and shapes


def test_shape_mismatch_names_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"logp \(4, 3\).*old_logp \(4, 2\)"):
        grpo_loss(torch.zeros(4, 3), torch.zeros(4, 2), ADV, MASK, LossSettings(beta=0.0))
    with pytest.raises(ValueError, match=r"advantages must be \[N\] = \(4,\), got shape \(3,\)"):
        grpo_loss(torch.zeros(4, 3), torch.zeros(4, 3), ADV[:3], MASK, LossSettings(beta=0.0))
    with pytest.raises(ValueError, match=r"ref_logp \(4, 1\)"):
        grpo_loss(torch.zeros(4, 3), torch.zeros(4, 3), ADV, MASK, LossSettings(), ref_logp=torch.zeros(4, 1))


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_completion_length"):
        LossSettings(aggregation="dr_grpo")
    with pytest.raises(ValueError, match="clip_low=1.0"):
        LossSettings(clip_low=1.0)
    with pytest.raises(ValueError, match="aggregation='mean'"):
        LossSettings(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is_cap=0"):
        LossSettings(is_cap=0.0)


def test_dr_grpo_rejects_completions_longer_than_the_budget() -> None:
    logp, old = _on_policy_logp()
    with pytest.raises(ValueError, match="3 tokens, more than max_completion_length=2"):
        settings = LossSettings(beta=0.0, aggregation="dr_grpo", max_completion_length=2)
        grpo_loss(logp, old, ADV, MASK, settings)


def test_step_advantages_keep_only_groups_with_a_signal_unless_all_are_flat() -> None:
    from memrl.grpo.advantages import step_advantages

    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])  # group 0 differs, group 1 is flat
    kept = step_advantages(rewards, 2, scale="std", filter_zero_variance=True)
    assert kept.signal_groups.tolist() == [True, False]
    assert kept.keep is not None and kept.keep.tolist() == [True, True, False, False]
    torch.testing.assert_close(kept.advantages, group_advantages(rewards, 2, scale="std"))
    assert step_advantages(rewards, 2, scale="std", filter_zero_variance=False).keep is None
    flat = step_advantages(torch.tensor([0.5, 0.5, 1.0, 1.0]), 2, scale="std", filter_zero_variance=True)
    assert flat.keep is None and flat.signal_groups.tolist() == [False, False]
