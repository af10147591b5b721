"""The learner: batching helpers, the DeepSpeed PolicyTrainer (one rank, in process) and the
Ray LearnerGroup (two data-parallel ranks, ZeRO-2, gloo) against a single-rank reference."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from memrl.grpo.loss import LossSettings
from memrl.learner.batching import (
    group_bounds,
    micro_batch_bounds,
    policy_inputs,
    shard_bounds,
    slice_batch,
)
from memrl.learner.distributed import free_port, set_rank_env
from memrl.learner.packing import pack_completions
from memrl.learner.policy import (
    LearnerSettings,
    PolicyTrainer,
    UnsafeCheckpointError,
    check_plain_pickles,
    deepspeed_config,
)
from memrl.learner.stats import merge_rank_stats
from memrl.learner.step import shard_step, step_inputs
from memrl.metric_keys import CATALOGUE, TRAIN_REFERENCE_SECONDS
from memrl.model.tiny import build_tiny_model
from memrl.types import RolloutBatch

TEMPERATURE = 0.9
TEXTS = [
    f"<reasoning>\n{a} plus {b} is {a + b}\n</reasoning>\n<answer>\n{a + b}\n</answer>"
    for a in range(9)
    for b in range(9)
]


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny"),
        TEXTS,
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        seed=0,
    )


@pytest.fixture(scope="module")
def single_rank() -> None:
    """This test process as rank 0 of a world of 1 (gloo on loopback), for in-process trainers."""
    if not dist.is_initialized():
        set_rank_env(0, 1, "127.0.0.1", free_port())


def cpu_trainer(settings: LearnerSettings) -> PolicyTrainer:
    """A trainer on the CPU whatever the machine has: the float32 tolerances below assume it
    (on a GPU machine the defaults would pick CUDA and bf16; GPU runs are tests marked gpu)."""
    return PolicyTrainer(settings, device="cpu")


def make_settings(model_dir: Path, **overrides) -> LearnerSettings:
    options = dict(
        bf16=False,
        model_path=str(model_dir),
        max_steps=10,
        lr=1e-3,
        warmup_ratio=0.0,
        max_grad_norm=1e6,  # off unless a test wants it
        weight_decay=0.0,
        micro_batch_size=3,
        loss=LossSettings(beta=0.0),
        temperature=TEMPERATURE,
    )
    options.update(overrides)
    return LearnerSettings(**options)


def make_batch(
    vocab: int, groups: int, group_size: int, *, pad_id: int, seed: int = 0
) -> RolloutBatch:
    """Random tokens with uneven left padding of prompts and right padding of completions."""
    gen = torch.Generator().manual_seed(seed)
    n, p, length = groups * group_size, 6, 5
    prompt_lens = torch.randint(2, p + 1, (n,), generator=gen)
    prompt_lens[0] = p  # one row without padding
    completion_lens = torch.randint(1, length + 1, (n,), generator=gen)
    completion_lens[1] = length
    prompt_mask = (torch.arange(p) >= p - prompt_lens[:, None]).long()
    completion_mask = (torch.arange(length) < completion_lens[:, None]).long()
    prompt_ids = torch.randint(3, vocab, (n, p), generator=gen).masked_fill(
        prompt_mask == 0, pad_id
    )
    completion_ids = torch.randint(3, vocab, (n, length), generator=gen).masked_fill(
        completion_mask == 0, pad_id
    )
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        behaviour_logprobs=torch.zeros(n, length),
        token_versions=torch.zeros(n, length, dtype=torch.int64),
        texts=[""] * n,
        group_index=[i // group_size for i in range(n)],
        record_ids=[str(i // group_size) for i in range(n)],
        weight_version=0,
    )


def batch_for(model_dir: Path, groups: int, group_size: int, seed: int = 0) -> RolloutBatch:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return make_batch(len(tokenizer), groups, group_size, pad_id=tokenizer.pad_token_id, seed=seed)


def grouped_batch(model_dir: Path, groups: int, group_size: int, seed: int = 0) -> RolloutBatch:
    """``batch_for`` with one prompt per group, as a rollout returns it (the packed layout
    then shares each prompt)."""
    batch = batch_for(model_dir, groups, group_size, seed)
    first = torch.arange(batch.num_completions) // group_size * group_size
    batch.prompt_ids, batch.prompt_mask = batch.prompt_ids[first], batch.prompt_mask[first]
    return batch


def weights(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
    return trainer.state_dict_for_publish()


def unpadded_logprobs(model: torch.nn.Module, batch: RolloutBatch, row: int) -> torch.Tensor:
    """Completion log-probs of one row from a forward over its real tokens only (no padding)."""
    prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
    completion = batch.completion_ids[row][batch.completion_mask[row].bool()]
    ids = torch.cat([prompt, completion])[None]
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(ids[0]) - 1]
    logp = torch.log_softmax(logits.float() / TEMPERATURE, dim=-1)
    return logp.gather(1, completion[:, None])[:, 0]


# ---------------------------------------------------------------------- pure batching helpers


def test_policy_inputs_positions_skip_left_padding() -> None:
    prompt_ids = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]])
    prompt_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    completion_ids = torch.tensor([[9, 0], [9, 4]])
    completion_mask = torch.tensor([[1, 0], [1, 1]])
    ids, attn, pos = policy_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert ids.tolist() == [[0, 0, 7, 8, 9, 0], [5, 6, 7, 8, 9, 4]]
    assert attn.tolist() == [[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert pos.tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]


def test_micro_batch_and_shard_bounds() -> None:
    assert micro_batch_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert micro_batch_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]  # empty passes last
    assert group_bounds([4, 4, 1, 1, 1, 4]) == [(0, 2), (2, 5), (5, 6)]
    # 3 groups of 2 over 2 ranks: whole groups, the first rank takes the extra one.
    assert shard_bounds([0, 0, 1, 1, 2, 2], 2) == [(0, 4), (4, 6)]
    with pytest.raises(ValueError, match="2 prompt groups but there are 3 learner ranks"):
        shard_bounds([0, 0, 1, 1], 3)


def test_slice_batch_keeps_rows_aligned() -> None:
    batch = make_batch(50, 3, 2, pad_id=0)
    part = slice_batch(batch, 2, 5)
    assert part.num_completions == 3
    assert torch.equal(part.completion_ids, batch.completion_ids[2:5])
    # A copy, not a view: pickled for Ray, it carries only its own rows.
    assert part.completion_ids.untyped_storage().nbytes() == part.completion_ids.nbytes
    assert part.group_index == [1, 1, 2] and part.record_ids == ["1", "1", "2"]
    with pytest.raises(ValueError, match="rows 4:9 are outside the batch of 6"):
        slice_batch(batch, 4, 9)


def test_pack_completions_shares_each_prompt_and_skips_padding() -> None:
    # Rows 0 and 1 share the prompt [7, 8] (left-padded), row 2 has its own.
    prompt_ids = torch.tensor([[0, 7, 8], [0, 7, 8], [5, 6, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[3, 4, 0], [10, 0, 0], [11, 12, 13]])
    completion_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    packed = pack_completions(prompt_ids, prompt_mask, completion_ids, completion_mask, pad_id=0)
    assert packed.input_ids.tolist() == [[7, 8, 3, 4, 10, 0], [5, 6, 9, 11, 12, 13]]
    # Each completion continues the prompt's positions; the pad position restarts at 0.
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 0], [0, 1, 2, 3, 4, 5]]
    sees = packed.attention[0, 0].int().tolist()
    assert sees[3] == [1, 1, 1, 1, 0, 0]  # completion 0's second token: prompt + itself
    assert sees[4] == [1, 1, 0, 0, 1, 0]  # completion 1 does not see completion 0
    assert sees[5] == [0, 0, 0, 0, 0, 1]  # padding sees only itself (no all-masked row)
    # Token t of a completion is predicted at the position before it: the prompt's last first.
    assert packed.source.tolist() == [1, 2, 1, 8, 9, 10]
    assert packed.targets.tolist() == [3, 4, 10, 11, 12, 13]
    assert list(zip(packed.rows.tolist(), packed.cols.tolist())) == [
        (0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert packed.computed_tokens == 12  # against 3 rows x 6 = 18 padded
    with pytest.raises(ValueError, match="row 1 has no real prompt token"):
        pack_completions(prompt_ids, torch.tensor([[0, 1, 1], [0, 0, 0], [1, 1, 1]]),
                         completion_ids, completion_mask)


def test_shard_step_and_step_inputs_count_the_whole_step() -> None:
    # Two rollout chunks (2 groups of 2, then 1 group of 2): 3 groups over 2 ranks.
    chunks = [make_batch(50, 2, 2, pad_id=0, seed=0), make_batch(50, 1, 2, pad_id=0, seed=1)]
    lengths = torch.cat([c.completion_lengths for c in chunks])
    shards = [shard_step(chunks, rank, 2, micro_batch_size=3) for rank in (0, 1)]
    assert [s.rows for s in shards] == [(0, 4), (4, 6)]
    assert all(s.passes == 2 and s.global_seqs == 6 for s in shards)  # 4 rows need 2 passes
    assert all(s.global_tokens == int(lengths.sum()) for s in shards)
    assert shards[1].batch.group_index == [2, 2]  # the second chunk's group, offset
    advantages = torch.arange(6.0)
    batch, adv, options = step_inputs(shards[1], advantages)
    assert adv.tolist() == [4.0, 5.0] and batch.num_completions == 2
    assert options["global_tokens"] == int(lengths.sum()) and options["num_micro_batches"] == 2
    # Dropping rows 0, 1 and 5: every rank renormalises over the kept rows of the whole step.
    keep = torch.tensor([False, False, True, True, True, False])
    ref = torch.ones(2, 5)
    batch, adv, options = step_inputs(shards[1], advantages, keep, ref)
    assert adv.tolist() == [4.0] and batch.num_completions == 1
    assert options["ref_logp"].shape == (1, 5)
    assert options["global_seqs"] == 3 and options["global_tokens"] == int(lengths[2:5].sum())
    with pytest.raises(ValueError, match=r"advantages has shape \(5,\), expected \(6,\)"):
        step_inputs(shards[0], torch.zeros(5))
    with pytest.raises(ValueError, match=r"rank = 2: must be in \[0, 2\)"):
        shard_step(chunks, 2, 2, micro_batch_size=3)


def test_merge_rank_stats_sums_shares_and_weights_means_by_tokens() -> None:
    merged = merge_rank_stats(
        [
            {"loss": 0.25, "tokens": 30.0, "sequences": 4.0, "kl": 0.1, "grad_norm": 2.0,
             "step_time_s": 1.0},
            {"loss": -0.05, "tokens": 10.0, "sequences": 2.0, "kl": 0.5, "grad_norm": 2.0,
             "step_time_s": 3.0},
        ]
    )
    assert merged["loss"] == pytest.approx(0.2)
    assert merged["tokens"] == 40.0 and merged["sequences"] == 6.0
    assert merged["kl"] == pytest.approx((30 * 0.1 + 10 * 0.5) / 40)  # 0.2
    assert merged["grad_norm"] == 2.0 and merged["step_time_s"] == 3.0


def test_bf16_under_zero_accumulates_gradients_in_float32() -> None:
    settings = LearnerSettings(model_path="x", max_steps=1, zero_stage=2)
    assert deepspeed_config(settings, bf16=True)["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in deepspeed_config(settings, bf16=False)
    # DeepSpeed refuses bf16 weights with float32 accumulation without ZeRO.
    stage0 = LearnerSettings(model_path="x", max_steps=1, zero_stage=0)
    assert "data_types" not in deepspeed_config(stage0, bf16=True)


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="LearnerSettings.zero_stage = 4"):
        LearnerSettings(model_path="x", max_steps=1, zero_stage=4)
    assert LearnerSettings(model_path="x", max_steps=10, warmup_ratio=0.15).warmup_steps == 2


# ------------------------------------------------------------- PolicyTrainer, one rank in process


def test_logprobs_with_left_padding_equal_unpadded_forward(
    model_dir: Path, single_rank: None
) -> None:
    trainer = cpu_trainer(make_settings(model_dir, micro_batch_size=3))
    batch = batch_for(model_dir, groups=2, group_size=4)
    got = trainer.logprobs(batch)
    assert got.shape == (8, 5) and got.dtype == torch.float32
    with torch.no_grad():
        for row in range(batch.num_completions):
            expected = unpadded_logprobs(trainer.engine.module, batch, row)
            k = len(expected)
            torch.testing.assert_close(got[row, :k], expected, atol=1e-5, rtol=0)
            assert torch.all(got[row, k:] == 0)
    # Micro-batching does not change the numbers.
    torch.testing.assert_close(trainer.logprobs(batch, num_micro_batches=1), got, atol=1e-6, rtol=0)


def test_optimizer_step_raises_logprob_of_positive_advantage_and_steps_once(
    model_dir: Path, single_rank: None
) -> None:
    trainer = cpu_trainer(make_settings(model_dir))
    batch = batch_for(model_dir, groups=2, group_size=4)
    before_w = weights(trainer)
    before = trainer.logprobs(batch)
    advantages = torch.zeros(8)
    advantages[1] = 1.0  # only completion 1 is rewarded
    stats = trainer.optimizer_step(batch, advantages)
    after = trainer.logprobs(batch)
    assert after[1].sum() > before[1].sum() + 1e-3
    changed = [k for k, v in weights(trainer).items() if not torch.equal(v, before_w[k])]
    assert changed  # the weights moved
    assert trainer.steps == 1 and trainer.scheduler.last_epoch == 1 and stats["step"] == 1.0
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # π_old = π_θ before the update
    assert stats["clip_frac"] == 0.0 and stats["kl"] == 0.0
    assert stats["tokens"] == float(batch.completion_mask.sum()) and stats["sequences"] == 8.0
    # token_mean loss at ratio 1: −Σ A_i·(tokens of i) / all tokens.
    expected_loss = -float(batch.completion_mask[1].sum()) / float(batch.completion_mask.sum())
    assert stats["loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_learning_rate_follows_warmup_then_cosine(model_dir: Path, single_rank: None) -> None:
    lr = 1e-3
    trainer = cpu_trainer(make_settings(model_dir, lr=lr, max_steps=10, warmup_ratio=0.2))
    batch = batch_for(model_dir, groups=2, group_size=2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    start = weights(trainer)
    lrs = []
    for step in range(4):
        lrs.append(trainer.optimizer_step(batch, advantages)["lr"])
        assert trainer.steps == step + 1 and trainer.scheduler.last_epoch == step + 1
        if step == 0:  # warm-up starts at lr 0: the first step leaves the weights alone
            assert all(torch.equal(v, start[k]) for k, v in weights(trainer).items())
    # 2 warm-up steps (0, lr/2), then cosine over the remaining 8: lr, lr·(1 + cos(π/8))/2.
    expected = [0.0, lr / 2, lr, lr * 0.5 * (1 + math.cos(math.pi / 8))]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_result_does_not_depend_on_micro_batch_size_or_checkpointing(model_dir: Path, single_rank: None) -> None:
    batch = batch_for(model_dir, groups=3, group_size=3)
    advantages = torch.linspace(-1.0, 1.0, 9)
    results = []
    for micro, checkpointing in ((1, False), (9, True)):
        trainer = cpu_trainer(
            make_settings(
                model_dir, micro_batch_size=micro, lr=1e-4, gradient_checkpointing=checkpointing
            )
        )
        stats = trainer.optimizer_step(batch, advantages)
        results.append((stats, weights(trainer)))
    (stats_a, w_a), (stats_b, w_b) = results
    assert stats_a["loss"] == pytest.approx(stats_b["loss"], abs=1e-6)
    assert stats_a["grad_norm"] == pytest.approx(stats_b["grad_norm"], rel=1e-5)
    for key in w_a:
        torch.testing.assert_close(w_a[key], w_b[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("stage", [0, 3])
def test_packed_and_padded_steps_give_the_same_gradients(
    model_dir: Path, single_rank: None, stage: int
) -> None:
    # Groups of 4 over micro-batches of 3: a group's prompt is split across passes too.
    batch = grouped_batch(model_dir, groups=3, group_size=4)
    advantages = torch.linspace(-1.0, 1.0, 12)
    results = {}
    for pack in (False, True):
        trainer = cpu_trainer(make_settings(
            model_dir, micro_batch_size=3, lr=1e-4, zero_stage=stage, pack_sequences=pack,
            loss=LossSettings(beta=0.04)))
        logp = trainer.logprobs(batch)
        stats = trainer.optimizer_step(batch, advantages)
        results[pack] = (logp, stats, weights(trainer))
    (logp_a, stats_a, w_a), (logp_b, stats_b, w_b) = results[False], results[True]
    torch.testing.assert_close(logp_b, logp_a, atol=1e-5, rtol=0)
    assert stats_b["loss"] == pytest.approx(stats_a["loss"], abs=1e-6)
    assert stats_b["grad_norm"] == pytest.approx(stats_a["grad_norm"], rel=1e-5)
    for key in w_a:
        torch.testing.assert_close(w_b[key], w_a[key], atol=1e-6, rtol=0)


def test_grad_clipping_caps_the_update_and_reports_the_norm_before_clipping(
    model_dir: Path, single_rank: None
) -> None:
    max_norm = 1e-3
    trainer = cpu_trainer(make_settings(model_dir, max_grad_norm=max_norm))
    batch = batch_for(model_dir, groups=2, group_size=2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])

    # Independent gradient of the token-mean policy-gradient loss −Σ A_i Σ_t log π / tokens.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total = sum(
        advantages[row] * unpadded_logprobs(model, batch, row).sum() for row in range(4)
    )
    (-total / batch.completion_mask.sum()).backward()
    expected_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert expected_norm > 10 * max_norm  # clipping must bind in this test

    stats = trainer.optimizer_step(batch, advantages)
    assert stats["grad_norm"] == pytest.approx(expected_norm, rel=1e-4)
    # AdamW's first moment after one step is (1 − β1)·g with g the clipped gradient.
    beta1 = trainer.settings.betas[0]
    state = trainer.engine.optimizer.state
    clipped = [state[p]["exp_avg"] / (1 - beta1) for p in trainer.engine.module.parameters()]
    assert float(torch.nn.utils.get_total_norm(clipped)) == pytest.approx(max_norm, rel=1e-3)


def test_reference_model_gives_zero_kl_at_step_zero(model_dir: Path, single_rank: None) -> None:
    trainer = cpu_trainer(make_settings(model_dir, loss=LossSettings(beta=0.04)))
    assert trainer.reference is not None
    batch = batch_for(model_dir, groups=2, group_size=2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    torch.testing.assert_close(
        trainer.ref_logprobs(batch), trainer.logprobs(batch), atol=1e-6, rtol=0
    )
    first = trainer.optimizer_step(batch, advantages)
    assert first["kl"] == pytest.approx(0.0, abs=1e-9)
    second = trainer.optimizer_step(batch, advantages)
    assert second["kl"] > 1e-6  # the policy moved away from the frozen reference
    # Without β no reference model is loaded.
    plain = cpu_trainer(make_settings(model_dir))
    assert plain.reference is None
    with pytest.raises(RuntimeError, match="only loaded when loss.beta > 0"):
        plain.ref_logprobs(batch)


def test_stale_tokens_get_importance_weights(model_dir: Path, single_rank: None) -> None:
    trainer = cpu_trainer(make_settings(model_dir, loss=LossSettings(beta=0.0, is_cap=2.0)))
    batch = batch_for(model_dir, groups=2, group_size=2)
    current = trainer.logprobs(batch)
    fresh = trainer.optimizer_step(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert "is_weight_mean" not in fresh and fresh["stale_token_frac"] == 0.0
    # The update changed the weights (version None until published): every token is stale now.
    # Behaviour log-probs about 3 nats below the learner's: every weight exp(≈3) is capped at 2.
    batch.behaviour_logprobs = current - 3.0
    stale = trainer.optimizer_step(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert stale["stale_token_frac"] == 1.0
    assert stale["is_weight_mean"] == pytest.approx(2.0)
    # Per completion, the gap summed over its real tokens (the ledger's per-worker share).
    lengths = batch.completion_lengths.float()
    assert trainer.row_gaps.shape == lengths.shape and bool((trainer.row_gaps > 2.0 * lengths).all())
    assert float(trainer.row_gaps.sum() / lengths.sum()) == pytest.approx(stale["behaviour_logprob_gap"])
    # The catalogue's train/ keys are these statistics and the reference pass's time, which
    # the learner actor adds (so each has a description, and none is a stale entry).
    assert {k.name for k in CATALOGUE if k.group == "train"} == \
        {f"train/{key}" for key in stale} | {TRAIN_REFERENCE_SECONDS}
    trainer.mark_published(7)
    batch.token_versions.fill_(7)
    assert "is_weight_mean" not in trainer.optimizer_step(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]))


def test_a_cpu_learner_compiles_nothing_at_run_time(model_dir: Path, tmp_path: Path) -> None:
    """A learner on CPU joins its process group without DeepSpeed's run-time C++ build (its
    shared-memory op, which a killed build used to leave locked for every later run): a fresh
    torch-extensions cache stays empty. In a child process: this one may have joined already."""
    code = ("import sys; from memrl.learner.distributed import free_port, set_rank_env; "
            "from memrl.learner.policy import LearnerSettings, PolicyTrainer; "
            "set_rank_env(0, 1, '127.0.0.1', free_port()); "
            "PolicyTrainer(LearnerSettings(model_path=sys.argv[1], max_steps=1, bf16=False), device='cpu')")
    extensions, home = tmp_path / "torch_extensions", tmp_path / "home"
    extensions.mkdir()
    home.mkdir()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions), "HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code, str(model_dir)], env=env, check=True, timeout=300,
                   capture_output=True)
    assert sorted(p.name for p in extensions.rglob("*")) == []


def test_publish_save_and_resume(model_dir: Path, single_rank: None, tmp_path: Path) -> None:
    trainer = cpu_trainer(make_settings(model_dir, warmup_ratio=0.5))
    batch = batch_for(model_dir, groups=2, group_size=2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    trainer.optimizer_step(batch, advantages)
    trainer.optimizer_step(batch, advantages)

    published = trainer.state_dict_for_publish()
    assert list(published) == list(trainer.engine.module.state_dict())
    assert published["lm_head.weight"] is published["model.embed_tokens.weight"]  # tied, one copy
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in published.values())

    trainer.save_state(tmp_path / "ckpt")
    hf_dir = trainer.save_hf(tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).state_dict()
    for key, value in reloaded.items():
        torch.testing.assert_close(value, published[key], atol=0, rtol=0)
    pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id
    assert AutoTokenizer.from_pretrained(hf_dir).pad_token_id == pad_id

    expected_stats = trainer.optimizer_step(batch, advantages)
    expected_weights = weights(trainer)
    trainer.load_state(tmp_path / "ckpt")
    assert trainer.steps == 2 and trainer.scheduler.last_epoch == 2
    for key, value in weights(trainer).items():
        torch.testing.assert_close(value, published[key], atol=0, rtol=0)
    # Optimizer moments and schedule came back too: the third step is reproduced exactly.
    again = trainer.optimizer_step(batch, advantages)
    assert again["lr"] == expected_stats["lr"]
    assert again["grad_norm"] == pytest.approx(expected_stats["grad_norm"])
    for key, value in weights(trainer).items():
        torch.testing.assert_close(value, expected_weights[key], atol=1e-7, rtol=0)
    with pytest.raises(FileNotFoundError, match="no learner checkpoint"):
        trainer.load_state(tmp_path / "missing")


def test_zero3_matches_zero0_and_publishes_full_weights(model_dir: Path, single_rank: None) -> None:
    batch = batch_for(model_dir, groups=2, group_size=2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    results = []
    for stage in (0, 3):
        trainer = cpu_trainer(make_settings(model_dir, zero_stage=stage))
        stats = trainer.optimizer_step(batch, advantages)
        results.append((stats, trainer.state_dict_for_publish()))
    (stats0, w0), (stats3, w3) = results
    assert stats3["grad_norm"] == pytest.approx(stats0["grad_norm"], rel=1e-5)
    assert list(w3) == list(w0)
    for key in w0:
        assert w3[key].shape == w0[key].shape  # gathered, not a ZeRO-3 partition
        torch.testing.assert_close(w3[key], w0[key], atol=1e-6, rtol=0)


# --------------------------------------------------------------- Ray: two data-parallel ranks




def test_two_rank_zero2_equals_single_rank_on_the_full_batch(
    model_dir: Path, single_rank: None, ray_cluster, tmp_path: Path
) -> None:
    from memrl.actors.learner import LearnerError, LearnerGroup
    from memrl.weights import unpack

    ray = ray_cluster
    # 3 groups of 2 over 2 ranks: shards of 4 and 2 rows; with one row per micro-batch the
    # second rank runs two empty passes to match the first rank's four.
    batch = batch_for(model_dir, groups=3, group_size=2, seed=1)
    advantages = torch.tensor([1.0, -1.0, 0.3, -0.3, 0.8, -0.8])

    # β > 0: the KL term's gradient is 0 at step 0, but the reference path is exercised.
    loss = LossSettings(beta=0.04)
    single = cpu_trainer(make_settings(model_dir, micro_batch_size=6, loss=loss))
    expected = single.optimizer_step(batch, advantages)
    expected_weights = weights(single)

    group = LearnerGroup(
        make_settings(model_dir, micro_batch_size=1, zero_stage=2, loss=loss),
        2,
        num_cpus_per_learner=1,
        timeout_s=300,
    )
    try:
        assert [info["rank"] for info in group.ping()] == [0, 1]
        stats = group.train_on_batch(batch, advantages)
        assert stats["kl"] == pytest.approx(0.0, abs=1e-9)
        rank0, rank1 = ray.get([w.state_dict.remote() for w in group.workers], timeout=120)
        for key, value in expected_weights.items():
            assert torch.equal(rank0[key], rank1[key]), key  # replicas identical
            torch.testing.assert_close(rank0[key], value, atol=1e-5, rtol=0)
        # Adam's first step is nearly scale-free, so check the gradient's scale on its own.
        assert stats["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
        assert stats["loss"] == pytest.approx(expected["loss"], abs=1e-6)
        assert stats["step"] == 1.0 and stats["sequences"] == 6.0
        assert stats["tokens"] == expected["tokens"]

        ref, summary = group.publish_weights(3)
        assert summary["version"] == 3 and summary["nbytes"] > 0
        packed = ray.get(ref, timeout=60)
        assert packed.version == 3
        for key, value in unpack(packed).items():
            assert torch.equal(value, rank0[key])
        assert [info["weight_version"] for info in group.ping()] == [3, 3]

        # What entered the loss, per group, merged over the ranks (groups 0-1 on rank 0, group 2
        # on rank 1); group 1 dropped by the keep mask was received, not trained.
        prepared = group.wait_reference(group.begin_step([ray.put(batch)]))
        keep = torch.tensor([True, True, False, False, True, True])
        _, trained = group.finish_step(prepared, advantages, keep)
        assert {g: (t.record_id, t.received, t.trained, t.versions) for g, t in trained.items()} == {
            0: ("0", 2, 2, [0, 0]), 1: ("1", 2, 0, []), 2: ("2", 2, 2, [0, 0])}

        with pytest.raises(LearnerError, match=r"learner rank \d on node .* failed in load"):
            group.load(tmp_path / "no-checkpoint-here")
    finally:
        group.shutdown()


class _RunsCode:
    """Unpickling this calls ``os.getpid`` (harmless, but a weights-only load must refuse it)."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_checkpoint_files_are_plain_and_a_tampered_one_is_refused(
    model_dir: Path, single_rank: None, tmp_path: Path, stage: int
) -> None:
    trainer = cpu_trainer(make_settings(model_dir, zero_stage=stage))
    batch = batch_for(model_dir, groups=2, group_size=2)
    trainer.optimizer_step(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    trainer.save_state(tmp_path / "ckpt")
    files = sorted((tmp_path / "ckpt").rglob("*.pt"))
    assert files  # DeepSpeed wrote its model (and, with ZeRO, optimizer) states
    check_plain_pickles(tmp_path / "ckpt")  # every file passes a weights-only load
    trainer.load_state(tmp_path / "ckpt")
    assert trainer.steps == 1

    state = torch.load(files[0], map_location="cpu", weights_only=True)
    state["client_state_extra"] = _RunsCode()
    torch.save(state, files[0])
    with pytest.raises(UnsafeCheckpointError, match=files[0].name):
        trainer.load_state(tmp_path / "ckpt")
