"""examples/minimal_grpo.py, the one-file Ray-free loop, for two steps on the tiny model:
the numbers it prints are those of a real GRPO step with the Memory-R+ reward."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_configs import FAST, TINY

from memrl.config import load_config
from memrl.tasks import build_task
from memrl.train.setup import prepare_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "minimal_grpo.py"
LAMBDA_EXPLORE = 0.5  # not 1, so a total that drops or repeats the weight is caught
COMPLETIONS = 16  # FAST: grpo.batch_size, 4 prompts x 4 completions


def _load_example():
    spec = importlib.util.spec_from_file_location("minimal_grpo", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("minimal")
    overrides = [*TINY, *FAST, f"model.tiny.cache_dir={root.parent / 'tiny-cache'}",
                 "memory.embedder=hash", "memory.warmup=0",
                 f"memory.lambda_explore={LAMBDA_EXPLORE}", "grpo.temperature=1.0",
                 "trainer.weight_decay=0.0"]  # weights move only where a gradient moves them
    saved = root / "model"
    history = _load_example().main(["--steps", "2", "--save", str(saved), *overrides])
    cfg = load_config(None, overrides)
    initial = Path(prepare_model(cfg, build_task(cfg)))  # the cached tiny model main() trained
    return history, initial, saved


def test_two_steps_give_finite_losses_and_a_gradient_where_rewards_differ(run):
    first, second = run[0]
    assert (first["step"], second["step"]) == (1, 2)
    for row in (first, second):
        assert math.isfinite(row["train/loss"]) and 0.0 <= row["train/grad_norm"] < math.inf
        assert row["train/kl"] >= 0.0
        # accuracy is the share of the completions the correctness reward (1 or 0) marks right
        assert row["accuracy"] == row["reward/correctness/mean"]
        assert (row["accuracy"] * COMPLETIONS).is_integer()
    # Step 1: policy = reference (no KL gradient), so only groups with unequal rewards push.
    assert first["train/kl"] == pytest.approx(0.0, abs=1e-6)
    assert (first["train/grad_norm"] > 0) == (first["grpo/zero_variance_groups_frac"] < 1)
    # Step 2: the failure memory holds step 1's completions, so exploration rewards differ.
    assert second["grpo/zero_variance_groups_frac"] < 1 and second["train/grad_norm"] > 0


def test_total_reward_is_the_weighted_sum_of_its_logged_components(run):
    history, _, _ = run
    for row in history:
        rule = sum(v for k, v in row.items() if k.startswith("reward/") and k.endswith("/mean")
                   and k not in ("reward/total/mean", "reward/memory_exploit/mean",
                                 "reward/memory_explore/mean"))
        expected = (rule + 1.0 * row["reward/memory_exploit/mean"]
                    + LAMBDA_EXPLORE * row["reward/memory_explore/mean"])
        assert row["reward/total/mean"] == pytest.approx(expected, abs=1e-9)
        assert {"reward/correctness/mean", "reward/xmlcount/mean"} <= set(row)


def test_memory_grows_by_one_value_per_completion(run):
    history, _, _ = run
    for row in history:
        values = row["memory/success_values"] + row["memory/failure_values"]
        assert values == COMPLETIONS * row["step"]
        keys = row["memory/success_keys"] + row["memory/failure_keys"]
        assert 1 <= keys <= 4 * row["step"]  # at most one key per prompt and memory


def test_engine_samples_with_the_updated_weights_and_the_saved_policy_changed(run):
    history, initial, saved = run
    assert [row["weights/sampled_with"] for row in history] == [0, 1]
    before = load_file(initial / "model.safetensors")
    after = load_file(saved / "model.safetensors")
    assert set(after) <= set(before)
    changed = [name for name in after if not torch.equal(before[name], after[name])]
    assert len(changed) >= len(after) // 2
    assert all(torch.isfinite(t).all() for t in after.values())
