"""Greedy accuracy of the current policy on held-out records, through the rollout workers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import ray

from memrl.rewards.registry import RewardComposer
from memrl.rewards.total import RewardPlan
from memrl.rollout.engine import SamplingSettings
from memrl.train.rollout_pool import GenerationRequest, RolloutPool
from memrl.train.scoring import concat_texts, score_step
from memrl.types import Record


@dataclass
class EvalResult:
    accuracy: float
    num_correct: int
    num_total: int
    mean_length: float  # completion tokens
    answer_tag_rate: float  # share of completions that open an <answer> tag


def chunk_requests(prompts: Sequence[str], ids: Sequence[str], num_chunks: int) -> list[GenerationRequest]:
    """Split prompts into ``num_chunks`` contiguous, nearly equal requests (none empty)."""
    num_chunks = max(1, min(num_chunks, len(prompts)))
    bounds = np.linspace(0, len(prompts), num_chunks + 1).round().astype(int)
    return [
        GenerationRequest(index=i, prompts=list(prompts[a:b]), record_ids=list(ids[a:b]))
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


def evaluate_greedy(pool: RolloutPool, records: Sequence[Record], render: Callable[[Record], str],
                    plan: RewardPlan, *, max_tokens: int, weights: Any,
                    timeout_s: float) -> EvalResult:
    """Greedy-decode every record once and score it with the task's correctness reward."""
    settings = SamplingSettings(temperature=1.0, top_p=1.0, max_tokens=max_tokens,
                                num_generations=1, seed=0)
    requests = chunk_requests([render(r) for r in records], [r.id for r in records],
                              num_chunks=len(pool))

    def submit(actor: Any, req: GenerationRequest):
        return actor.generate.options(num_returns=2).remote(
            req.prompts, req.record_ids, settings, weights, greedy=True)

    results = pool.generate(requests, submit)
    correctness_only = RewardPlan(
        specs=tuple(s for s in plan.specs if s.label == plan.correctness),
        correctness=plan.correctness,
        lambda_exploit=0.0,
        lambda_explore=0.0,
    )
    batches = ray.get([r.batch_ref for r in results], timeout=timeout_s)
    scores = score_step(batches, {r.id: r for r in records}, correctness_only,
                        RewardComposer(correctness_only.specs), max_tokens, memory=None)
    texts, _, lengths = concat_texts(batches)
    n_correct = int(scores.correct.sum())
    return EvalResult(accuracy=n_correct / len(records), num_correct=n_correct,
                      num_total=len(records), mean_length=float(lengths.mean()),
                      answer_tag_rate=sum("<answer>" in t for t in texts) / len(texts))
