"""``memory.mode: reference`` equals the official per-sample path (bench/official_memory.py).

Multi-step sequences with insertions, warm-up, key eviction and FIFO wrap-around, scored by
memrl's batched path and by the re-implementation of the official code, must agree to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.official_memory import OfficialMemory, official_step
from memrl.memory import HashingEmbedder, MemoryRewarder, MemorySettings

DIM = 24


def run_both(settings: MemorySettings, encode_official, embedder, steps):
    """Score ``steps`` (lists of (questions, reasonings, correct)) both ways; return the max
    absolute difference and the memrl rewarder."""
    ours = MemoryRewarder(settings, embedder)
    exploit_memory = OfficialMemory(
        encode_official, embedder.dim, settings.capacity_keys, settings.capacity_values,
        settings.window, settings.anneal_rate, 0,
    )
    explore_memory = (
        OfficialMemory(
            encode_official, embedder.dim, settings.capacity_keys, settings.capacity_values,
            settings.window, settings.anneal_rate, settings.warmup,
        )
        if settings.use_explore
        else None
    )
    worst = 0.0
    for questions, reasonings, correct in steps:
        exploit, explore = ours.score_and_insert(questions, reasonings, correct)
        want_exploit, want_explore = official_step(
            exploit_memory, explore_memory, questions, reasonings, correct, settings.k
        )
        worst = max(
            worst,
            float(np.abs(exploit - want_exploit).max()),
            float(np.abs(explore - want_explore).max()),
        )
    return worst, ours, exploit_memory, explore_memory


def random_steps(seed: int, num_steps: int, num_questions: int = 9, num_texts: int = 30):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(num_steps):
        questions = [f"question {int(q)}" for q in rng.integers(0, num_questions, 4) for _ in range(4)]
        # a small pool of texts: duplicates put identical vectors in the windows (flat cases)
        reasonings = [f"reasoning {int(t)}" for t in rng.integers(0, num_texts, len(questions))]
        steps.append((questions, reasonings, list(rng.random(len(questions)) < 0.35)))
    return steps


@pytest.mark.parametrize(
    "k, anneal_rate, use_explore, capacity_values",
    [(1, 1.0, True, 3), (3, 0.9, True, 2), (20, 0.97, True, 4), (2, 1.0, False, 3)],
)
def test_reference_mode_matches_official_per_sample_path(k, anneal_rate, use_explore, capacity_values):
    embedder = HashingEmbedder(DIM)
    settings = MemorySettings.reference(
        k=k, capacity_keys=5, capacity_values=capacity_values, warmup=4, window=8,
        anneal_rate=anneal_rate, use_explore=use_explore, embedder="hash", device="cpu",
    )
    worst, ours, exploit_memory, explore_memory = run_both(
        settings, lambda text: embedder.encode([text])[0], embedder, random_steps(k, 40)
    )
    assert worst <= 1e-5
    # the sequence exercised what it claims to: full key capacity (evictions), full FIFOs
    assert ours.shard.success.num_keys == 5 == len(exploit_memory.keys)
    assert ours.shard.success.value_counts().max() == capacity_values
    # same keys, same age order (memrl recycles slots, the official list shifts)
    ours_keys = ours.shard.success.index.vectors()[_age_order(ours.shard.success)]
    np.testing.assert_array_equal(ours_keys, np.array(exploit_memory.keys))
    if use_explore:
        assert ours.shard.failure.num_keys == 5 == len(explore_memory.keys)
        assert explore_memory.anneal_factor == pytest.approx(ours.normaliser.anneal_factor)


def test_warmup_counts_failure_keys_after_each_insert():
    """Official warm-up: explore is 0 until the failure memory holds ``warmup`` keys, counted
    right after the response's own insertion."""
    embedder = HashingEmbedder(DIM)
    settings = MemorySettings.reference(warmup=3, embedder="hash", device="cpu")
    steps = [(["q1", "q2", "q3", "q3"], ["w1", "w2", "c3", "w3"], [0, 0, 1, 0])]
    worst, ours, *_ = run_both(settings, lambda t: embedder.encode([t])[0], embedder, steps)
    assert worst == 0.0
    # third failure key arrives with response 3 (w3): only then is explore active; its own
    # novelty is ~0 and the window has one value → flat → 0. Responses 0-2: warm-up → 0.
    ours2 = MemoryRewarder(settings, embedder)
    _, explore = ours2.score_and_insert(*steps[0])
    np.testing.assert_array_equal(explore, [0, 0, 0, 0])
    assert ours2.normaliser.explore_window and len(ours2.normaliser.explore_window) == 1


def _age_order(memory):
    """Slots from oldest to newest key (slots are recycled cyclically from next_evict)."""
    n = memory.num_keys
    start = memory.next_evict if n == memory.capacity_keys else 0
    return [(start + i) % n for i in range(n)]
