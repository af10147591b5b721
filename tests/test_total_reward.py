"""The reward step's total against the formula R = Σᵢ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore,
with the weights read from the config (not from the scores), and its group advantages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memrl.config import load_config
from memrl.grpo.advantages import group_advantages
from memrl.memory import HashingEmbedder, MemoryRewarder, MemorySettings
from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import score_step
from memrl.rewards.total import EXPLOIT, EXPLORE
from memrl.tasks import build_task
from memrl.train.setup import build_reward_plan
from memrl.types import Record, RolloutBatch

G = 4  # completions per prompt
# λ ≠ 1 so that a weight applied twice (λ² ≠ λ) or not at all changes the total.
LAMBDA_EXPLOIT, LAMBDA_EXPLORE = 0.5, 2.0


def rollout(texts: list[str], record_ids: list[str]) -> RolloutBatch:
    n = len(texts)
    lengths = torch.tensor([1 + len(t) % 7 for t in texts])
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    ones = torch.ones((n, 3), dtype=torch.int64)
    return RolloutBatch(prompt_ids=ones, prompt_mask=ones, completion_ids=mask.clone(),
                        completion_mask=mask, behaviour_logprobs=torch.zeros((n, 8)),
                        token_versions=0 * mask, texts=texts, group_index=[i // G for i in range(n)],
                        record_ids=record_ids, weight_version=0)


def completion(reasoning: str, answer: str, tail: str = "") -> str:
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n{tail}"


def test_step_total_is_the_weighted_sum_and_advantages_centre_per_group():
    cfg = load_config(None, ["method=memoryr+", f"memory.lambda_exploit={LAMBDA_EXPLOIT}",
                             f"memory.lambda_explore={LAMBDA_EXPLORE}"])
    task = build_task(cfg)
    plan = build_reward_plan(cfg, task)
    composer = RewardComposer(plan.specs)
    memory = MemoryRewarder(MemorySettings.default(warmup=0, embedder="hash", device="cpu"),
                            HashingEmbedder(16))
    records = {f"q{i}": Record(id=f"q{i}", question=f"{i} + {i} = ?", answer=str(2 * i))
               for i in range(3)}
    ids = [f"q{i // G}" for i in range(3 * G)]
    rng = np.random.default_rng(0)
    for step in range(3):  # later steps meet stored responses: both memory terms are non-zero
        texts = []
        for rid in ids:
            gold = records[rid].answer
            answer = gold if rng.random() < 0.5 else str(int(gold) + 1)
            texts.append(completion(f"work {int(rng.integers(0, 6))}", answer,
                                    tail="x" * int(rng.integers(0, 3))))
        scores = score_step([rollout(texts, ids)], records, plan, composer,
                            cfg.grpo.max_completion_length, memory.score_and_insert, step)

    rule = [s.label for s in plan.specs]
    assert list(scores.components) == [*rule, EXPLOIT, EXPLORE]
    assert np.abs(scores.components[EXPLOIT]).max() > 0.1
    assert np.abs(scores.components[EXPLORE]).max() > 0.1
    # The weights from the config: 1 per rule reward (no `rewards` list), λ from `memory`.
    expected = sum(scores.components[name] for name in rule)
    expected = (expected + LAMBDA_EXPLOIT * scores.components[EXPLOIT]
                + LAMBDA_EXPLORE * scores.components[EXPLORE])
    np.testing.assert_allclose(scores.total, expected, rtol=0, atol=1e-12)
    # The logged means (memrl train logs reward/<name>/mean) obey the same sum.
    logged = {name: float(v.mean()) for name, v in scores.components.items()}
    assert float(scores.total.mean()) == pytest.approx(
        sum(logged[n] for n in rule) + LAMBDA_EXPLOIT * logged[EXPLOIT]
        + LAMBDA_EXPLORE * logged[EXPLORE], abs=1e-12)

    advantages = group_advantages(torch.tensor(scores.total, dtype=torch.float32), G,
                                  scale="std").view(-1, G)
    np.testing.assert_allclose(advantages.mean(dim=1).numpy(), 0.0, atol=1e-6)
    grouped = expected.reshape(-1, G)
    by_hand = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(advantages.numpy(), by_hand, rtol=1e-5, atol=1e-5)
    assert (advantages.abs().sum(dim=1) > 0).any()  # not all groups flat: the check has teeth



def test_r1_random_adds_its_seeded_bonus_and_explore_has_no_exploit_term():
    from memrl.rewards.random_bonus import draw_random_bonus
    from memrl.rewards.total import RANDOM_BONUS

    records = {"q0": Record(id="q0", question="1 + 1 = ?", answer="2")}
    ids = ["q0"] * G
    texts = [completion("1 + 1 = 2", "2"), completion("The answer is 2.", "2"),
             completion("The answer is 3.", "3"), completion("1 + 1 = 3", "3")]
    cfg = load_config(None, ["method=r1+random", "random_bonus.mean=0.3", "random_bonus.std=0.1", "seed=4"])
    plan = build_reward_plan(cfg, build_task(cfg))
    composer = RewardComposer(plan.specs)
    scores = score_step([rollout(texts, ids)], records, plan, composer, 200, memory=None, step=7)
    rule = [s.label for s in plan.specs]
    assert list(scores.components) == [*rule, RANDOM_BONUS] and scores.weights[RANDOM_BONUS] == 1.0
    bonus = draw_random_bonus(G, 0.3, 0.1, seed=4, step=7)
    np.testing.assert_array_equal(scores.components[RANDOM_BONUS], bonus)
    np.testing.assert_allclose(scores.total, sum(scores.components[n] for n in rule) + bonus, atol=1e-12)
    again = score_step([rollout(texts, ids)], records, plan, composer, 200, memory=None, step=7)
    np.testing.assert_array_equal(again.total, scores.total)  # a retried scoring call draws the same
    assert scores.direct.tolist() == [False, True, True, False]
    assert scores.correct.tolist() == [True, True, False, False]

    explore = load_config(None, ["method=explore", f"memory.lambda_explore={LAMBDA_EXPLORE}"])
    plan = build_reward_plan(explore, build_task(explore))
    assert (plan.lambda_exploit, plan.lambda_explore) == (0.0, LAMBDA_EXPLORE)
    memory = MemoryRewarder(MemorySettings.default(warmup=0, embedder="hash", device="cpu"), HashingEmbedder(16))
    for step in range(2):
        scores = score_step([rollout(texts, ids)], records, plan, RewardComposer(plan.specs), 200,
                            memory.score_and_insert, step)
    assert EXPLOIT not in scores.components and EXPLORE in scores.components
