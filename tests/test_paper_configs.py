"""The published rows' configs: official: true sets the official code's setup in one switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memrl.config import load_config
from memrl.memory.settings import MemorySettings
from memrl.official import official_values
from memrl.rewards.total import reward_plan

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ROWS = [(m, meth) for m in ("qwen2.5-0.5b", "llama3.2-1b", "falcon3-1b")
        for meth in ("r1", "cosine", "memoryr", "memoryr_plus")]


@pytest.mark.parametrize("model,method", ROWS)
def test_each_published_row_has_an_official_config(model, method):
    cfg = load_config(CONFIGS / f"gsm8k_{model}_{method}_official.yaml")
    assert cfg.official and cfg.memory.mode == "reference"
    assert cfg.grpo.loss_aggregation == "seq_mean_token_mean" and cfg.task.verifier == "exact"
    assert cfg.memory.capacity_values == (1000 if method == "memoryr" else 100)
    expected_warmup = 1000 if method == "memoryr_plus" and model != "falcon3-1b" else 500
    assert (cfg.memory.warmup, cfg.memory.warmup_unit) == (expected_warmup, "failure_keys")
    assert cfg.task.num_shots == (1 if model == "llama3.2-1b" else 0)


def test_official_switch_replaces_base_values_but_not_explicit_ones():
    paper = load_config(CONFIGS / "gsm8k_qwen2.5-0.5b_memoryr_plus.yaml")
    assert (paper.memory.mode, paper.memory.warmup, paper.memory.warmup_unit) == ("paper", 50, "steps")
    on = load_config(CONFIGS / "gsm8k_qwen2.5-0.5b_memoryr_plus.yaml", ["official=true"])
    reference = MemorySettings.reference()
    assert (on.memory.warmup, on.memory.warmup_unit) == (reference.warmup, reference.warmup_unit)
    kept = load_config(CONFIGS / "gsm8k_qwen2.5-0.5b_memoryr_plus.yaml", ["official=true", "memory.warmup=7"])
    assert kept.memory.warmup == 7 and kept.memory.mode == "reference"
    one_gpu = load_config(CONFIGS / "gsm8k_qwen2.5-0.5b_memoryr_plus_official_1gpu.yaml")
    assert one_gpu.memory.warmup == 1000  # the parent's explicit key survives the layout file
    gpus = one_gpu.rollout.num_gpus_per_worker + one_gpu.learner.num_gpus + one_gpu.memory.num_gpus
    assert gpus == pytest.approx(1.0)


def test_official_values_match_memory_settings_reference():
    values = official_values("memoryr+")
    ref = MemorySettings.reference()
    for key in ("mode", "k", "capacity_keys", "capacity_values", "warmup", "warmup_unit", "window"):
        assert values[f"memory.{key}"] == getattr(ref, key)
    assert official_values("memoryr")["memory.capacity_values"] == 1000


def test_combined_method_turns_on_both_memory_rewards_and_cosine():
    plan = reward_plan("memoryr+cosine", ["correctness"], "correctness", verifier="exact",
                       reference=True, lambda_exploit=1.0, lambda_explore=1.0)
    assert [s.fn for s in plan.specs] == ["correctness", "cosine_length"]
    assert plan.lambda_exploit == 1.0 and plan.lambda_explore == 1.0
    cfg = load_config(None, ["method=memoryr+cosine"])
    assert cfg.uses_memory and cfg.uses_explore


def test_empty_reasoning_is_scored_as_empty_not_as_the_whole_text():
    from memrl.rewards.registry import RewardComposer
    from memrl.rewards.step_scores import score_step
    from memrl.types import Record, RolloutBatch

    seen = {}

    def memory(questions, reasonings, correct, step):
        seen["reasonings"] = reasonings
        n = len(questions)
        return np.zeros(n, np.float32), np.zeros(n, np.float32)

    texts = ["<reasoning>\n\n</reasoning>\n<answer>\n4\n</answer>\n", "no tags at all"]
    import torch

    ones = torch.ones((2, 3), dtype=torch.int64)
    batch = RolloutBatch(prompt_ids=ones, prompt_mask=ones, completion_ids=ones, completion_mask=ones,
                         behaviour_logprobs=torch.zeros((2, 3)), token_versions=0 * ones, texts=texts,
                         group_index=[0, 0], record_ids=["q1", "q1"], weight_version=0)
    plan = reward_plan("memoryr+", ["correctness"], "correctness", verifier="exact", reference=False,
                       lambda_exploit=1.0, lambda_explore=1.0)
    score_step([batch], {"q1": Record(id="q1", question="2+2?", answer="4")}, plan,
               RewardComposer(plan.specs), 64, memory)
    assert seen["reasonings"] == ["", "no tags at all"]
