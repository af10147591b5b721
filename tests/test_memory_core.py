"""Memory-R / Memory-R+ rewards pinned on hand-built memories (deterministic fake embedder).

Vectors are 3-d unit vectors chosen so every reward can be worked out by hand; the comments
give the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from memrl.memory import HashingEmbedder, MemoryRewarder, MemorySettings
from memrl.memory.episodic import EpisodicMemory
from memrl.memory.index import KeyIndex, gpu_available
from memrl.memory.shard import MemoryShard, shard_of
from memrl.rewards.total import reward_plan, total_reward

S2 = math.sqrt(2.0)


class TableEmbedder:
    """Maps known texts to fixed unit vectors; records every encode call."""

    def __init__(self, table: dict[str, tuple[float, ...]]):
        self.table = {t: np.asarray(v, np.float32) / np.linalg.norm(v) for t, v in table.items()}
        self.dim = len(next(iter(table.values())))
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts]).astype(np.float32).reshape(-1, self.dim)


VECTORS = {
    "qA": (1, 0, 0),
    "qA-same-vector": (1, 0, 0),
    "qB": (0, 1, 0),
    "qC": (0, 0, 1),
    "qD": (0.8, 0.6, 0),
    "r1": (1, 0, 0),
    "r2": (0, 1, 0),
    "a": (1, 0, 0),
    "b": (0, 0, 1),
    "c": (0, 0.6, 0.8),
    "x": (0, 1, 0),
    "y": (0, 0, 1),
    "v": (0.6, 0, 0.8),
}


def make(**overrides) -> tuple[MemoryRewarder, TableEmbedder]:
    base = dict(k=1, warmup=1, capacity_keys=4, capacity_values=2, embedder="hash", device="cpu")
    base.update(overrides)
    embedder = TableEmbedder(VECTORS)
    return MemoryRewarder(MemorySettings.default(**base), embedder), embedder


def run_hand_sequence(rewarder: MemoryRewarder) -> list[tuple[np.ndarray, np.ndarray]]:
    """Step 0 stores r1, r2 as successes of qA; step 1 scores b, a, c (all wrong); step 2
    scores y, x, v (all right)."""
    return [
        rewarder.score_and_insert(["qA", "qA"], ["r1", "r2"], [1, 1]),
        rewarder.score_and_insert(["qA"] * 3, ["b", "a", "c"], [0, 0, 0]),
        rewarder.score_and_insert(["qA"] * 3, ["y", "x", "v"], [1, 1, 1]),
    ]


# Success memory of qA = {r1, r2}: centroid (0.5, 0.5, 0). Distances: b → √1.5 = 1.224745,
# a → √0.5 = 0.707107, c → √0.9 = 0.948683. Raw exploit −n, min-max over the window:
# b is the first (flat → 0), a the max (1), c → (1.224745 − 0.948683)/(1.224745 − 0.707107).
C_EXPLOIT = (math.sqrt(1.5) - math.sqrt(0.9)) / (math.sqrt(1.5) - math.sqrt(0.5))  # 0.533311
# Failure memory of qA after step 1 = FIFO of 2 → {a, c}. y: best cos 0.8 → 0.2; x: best cos
# 0.6 → 0.4; v: best cos max(0.6, 0.64) → 0.36. Window [0.2] → 0, then 1, then 0.16/0.2 = 0.8.


def test_paper_rewards_by_hand():
    rewarder, _ = make()
    (e0, x0), (e1, x1), (e2, x2) = run_hand_sequence(rewarder)
    np.testing.assert_allclose(e0, [0, 0])  # empty memory: both components 0
    np.testing.assert_allclose(x0, [0, 0])  # and step 0 < warm-up
    np.testing.assert_allclose(e1, [0, 1, C_EXPLOIT], atol=1e-6)
    np.testing.assert_allclose(x1, [0, 0, 0])  # warm-up over, but the failure memory was empty
    np.testing.assert_allclose(e2, [0, 1, C_EXPLOIT], atol=1e-6)
    np.testing.assert_allclose(x2, [0, 1, 0.8], atol=1e-6)


def test_fifo_values_and_step_order():
    rewarder, _ = make()
    run_hand_sequence(rewarder)
    success, failure = rewarder.shard.success, rewarder.shard.failure
    assert success.num_keys == 1 and failure.num_keys == 1
    # capacity 2 per key, oldest dropped first: r1, r2, y, x, v → x, v; b, a, c → a, c
    assert success.slot_texts(0) == ["x", "v"]
    assert failure.slot_texts(0) == ["a", "c"]
    np.testing.assert_allclose(success.slot_values(0, ordered=True), [VECTORS["x"], VECTORS["v"]])
    assert rewarder.steps_done == 3


def test_annealing_per_step_after_warmup():
    rewarder, _ = make(anneal_rate=0.5)
    *_, (_, x2) = run_hand_sequence(rewarder)
    # explore started at step 1 (warm-up = 1 step), so step 2 is scaled by 0.5 ** 1
    np.testing.assert_allclose(x2, [0, 0.5, 0.4], atol=1e-6)


def test_warmup_in_steps_and_in_failure_keys():
    rewarder, _ = make(warmup=3)
    *_, (_, x2) = run_hand_sequence(rewarder)
    np.testing.assert_allclose(x2, [0, 0, 0])  # step 2 < 3
    rewarder, _ = make(warmup=1, warmup_unit="failure_keys", anneal_rate=0.5)
    _, (_, x1), (_, x2) = run_hand_sequence(rewarder)
    np.testing.assert_allclose(x1, [0, 0, 0])  # no failure key before step 1
    # active from step 2 (one failure key), which is then the first annealing step: factor 1
    np.testing.assert_allclose(x2, [0, 1, 0.8], atol=1e-6)


def test_k_larger_than_memory_equals_k_equal_to_memory():
    results = [run_hand_sequence(make(k=k)[0]) for k in (1, 5)]
    for (e_a, x_a), (e_b, x_b) in zip(*results):
        np.testing.assert_array_equal(e_a, e_b)
        np.testing.assert_array_equal(x_a, x_b)


def test_k_nearest_union_centroid_and_best_cosine():
    # success: qA holds {r1}, qB holds {r2, x}; failure: qA holds {b}, qB holds {c}
    rewarder, _ = make(k=2, capacity_values=4)
    rewarder.score_and_insert(["qA", "qB", "qB", "qA", "qB"], ["r1", "r2", "x", "b", "c"], [1, 1, 1, 0, 0])
    batch = rewarder.prepare(["qD"], ["y"], [1], step=5)
    raw = rewarder.raw_scores(batch)
    # qD = (0.8, 0.6, 0) is near both keys: union {r1, r2, x} → centroid (1/3, 2/3, 0);
    # y = (0, 0, 1) → ‖(−1/3, −2/3, 1)‖ = √(14/9)
    assert raw.distance[0] == pytest.approx(math.sqrt(14 / 9), abs=1e-6)
    # failure union {b, c}: best cosine of y is 1 (b = y) → novelty 0
    assert raw.novelty[0] == pytest.approx(0.0, abs=1e-6)
    rewarder, _ = make(k=1, capacity_values=4)
    rewarder.score_and_insert(["qA", "qB", "qB", "qA", "qB"], ["r1", "r2", "x", "b", "c"], [1, 1, 1, 0, 0])
    raw = rewarder.raw_scores(rewarder.prepare(["qD"], ["x"], [1], step=5))
    # k = 1 keeps only qA (cos 0.8 > 0.6): centroid r1, x ⟂ r1 → √2; failure {b}: cos 0 → 1
    assert raw.distance[0] == pytest.approx(S2, abs=1e-6)
    assert raw.novelty[0] == pytest.approx(1.0, abs=1e-6)


def test_reference_mode_inserts_before_scoring():
    # official order: r1 (right) is stored then compared with itself → distance 0, flat window
    # → 1 − 0 = 1; failure memory empty → explore 1.0. r2 (wrong) is stored in the failure
    # memory: exploit distance √2 → window [0, √2] → 1 − 1 = 0; explore compares r2 with
    # itself → novelty 0, window flat → 0.
    settings = MemorySettings.reference(warmup=0, embedder="hash", device="cpu")
    rewarder = MemoryRewarder(settings, TableEmbedder(VECTORS))
    exploit, explore = rewarder.score_and_insert(["qA", "qA"], ["r1", "r2"], [1, 0])
    np.testing.assert_allclose(exploit, [1, 0], atol=1e-6)
    np.testing.assert_allclose(explore, [1, 0], atol=1e-6)
    # the paper's order scores against the empty memory first: everything 0
    rewarder, _ = make(warmup=0)
    exploit, explore = rewarder.score_and_insert(["qA", "qA"], ["r1", "r2"], [1, 0])
    np.testing.assert_allclose(exploit, [0, 0])
    np.testing.assert_allclose(explore, [0, 0])


def test_duplicate_questions_encoded_once_and_cached_across_steps():
    rewarder, embedder = make(capacity_values=8)
    rewarder.score_and_insert(["qA", "qA", "qA", "qA"], ["a", "a", "b", "r1"], [1, 1, 0, 1])
    assert embedder.calls == [["qA", "a", "b", "r1"]]  # one call, each distinct text once
    rewarder.score_and_insert(["qA", "qA"], ["x", "y"], [1, 1])
    assert embedder.calls[1] == ["x", "y"]  # question embedding came from the cache
    assert rewarder.shard.success.num_keys == 1
    assert rewarder.shard.success.slot_texts(0) == ["a", "a", "r1", "x", "y"]
    assert rewarder.metrics()["question_cache_hits"] == 1.0


def test_key_merges_on_identical_embedding():
    rewarder, _ = make()
    rewarder.score_and_insert(["qA", "qA-same-vector"], ["a", "x"], [1, 1])
    assert rewarder.shard.success.num_keys == 1
    assert rewarder.shard.success.slot_texts(0) == ["a", "x"]


def test_oldest_question_evicted_and_slot_reused():
    rewarder, _ = make(capacity_keys=2)
    for q in ("qA", "qB", "qC"):
        rewarder.score_and_insert([q], ["x"], [1])
    memory = rewarder.shard.success
    assert [memory.question(s) for s in range(memory.num_keys)] == ["qC", "qB"]  # qA evicted
    rewarder.score_and_insert(["qB"], ["y"], [1])  # joins qB, does not make it younger
    rewarder.score_and_insert(["qD"], ["y"], [1])  # evicts qB, the oldest key
    assert [memory.question(s) for s in range(memory.num_keys)] == ["qC", "qD"]
    assert memory.num_values == 2
    sims, slots = memory.search(np.asarray([VECTORS["qD"]], np.float32) / 1.0, 2)
    assert slots[0].tolist() == [1, 0]  # the recycled slot is searchable at once
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_eviction_writes_one_row_and_never_rebuilds(monkeypatch):
    memory = EpisodicMemory(dim=3, capacity_keys=2, capacity_values=2)
    for q in ("qA", "qB"):
        memory.insert(q, np.float32(VECTORS[q]), np.float32(VECTORS["x"]), "x")
    monkeypatch.setattr(memory.index, "write_all", lambda *_: pytest.fail("index rebuilt"))
    writes = []
    original = memory.index.write
    monkeypatch.setattr(memory.index, "write", lambda slot, vec: (writes.append(slot), original(slot, vec)))
    memory.insert("qC", np.float32(VECTORS["qC"]), np.float32(VECTORS["x"]), "x")
    assert writes == [0]


def test_memory_r_has_no_failure_memory():
    rewarder, _ = make(use_explore=False)
    *_, (e2, x2) = run_hand_sequence(rewarder)
    np.testing.assert_allclose(e2, [0, 1, C_EXPLOIT], atol=1e-6)
    np.testing.assert_array_equal(x2, [0, 0, 0])
    assert rewarder.shard.failure is None and "failure_keys" not in rewarder.metrics()
    # Memory-R's total has no explore term: its memory part is λ_s·R̂_exploit alone.
    plan = reward_plan("memoryr", ["correctness"], "correctness", verifier="exact",
                       reference=False, lambda_exploit=1.0, lambda_explore=1.0)
    assert plan.lambda_explore == 0.0
    zero = {"correctness": np.zeros(3)}
    total = total_reward(zero, {"correctness": 1.0}, exploit=e2, lambda_exploit=plan.lambda_exploit)
    np.testing.assert_allclose(total.total, e2)


def test_memory_settings_take_the_config_defaults():
    from memrl.config import MemoryConfig
    from memrl.official import OFFICIAL_MEMORY

    section = MemoryConfig()
    settings = MemorySettings.default()
    for key in ("mode", "k", "capacity_keys", "capacity_values", "warmup", "warmup_unit",
                "anneal_rate", "window", "embedder", "embedder_backend", "value_text_chars"):
        assert getattr(settings, key) == getattr(section, key), key
    assert settings.use_explore
    reference = MemorySettings.reference(use_explore=False)
    assert {key: getattr(reference, key) for key in OFFICIAL_MEMORY} == OFFICIAL_MEMORY
    assert not reference.use_explore
    with pytest.raises(TypeError, match="capacity_keys"):
        MemorySettings(mode="paper", k=1)  # no defaults of its own for the config's keys
    with pytest.raises(ValueError, match=r"\['window'\] missing"):
        MemorySettings.from_dict({k: v for k, v in settings.to_dict().items() if k != "window"})


def test_value_texts_truncated():
    settings = MemorySettings.default(value_text_chars=4, embedder="hash", device="cpu")
    rewarder = MemoryRewarder(settings, HashingEmbedder(8))
    rewarder.score_and_insert(["q"], ["abcdefgh"], [1])
    assert rewarder.shard.success.slot_texts(0) == ["abcd"]


def test_sharded_lookup_equals_unsharded():
    """Two shards (questions split by hash) merged exactly give the single shard's rewards
    (while nothing is evicted: each shard evicts its own oldest question)."""
    settings = MemorySettings.default(k=3, warmup=1, capacity_keys=20, capacity_values=3, embedder="hash", device="cpu")
    embedder = HashingEmbedder(16)
    single = MemoryRewarder(settings, embedder)
    primary = MemoryRewarder(settings, embedder, shard_index=0, num_shards=2)
    peer = MemoryShard(settings, 16, shard_index=1, num_shards=2)
    rng = np.random.default_rng(0)
    owners = set()
    for _ in range(12):
        questions = [f"q{int(i)}" for i in rng.integers(0, 10, 3) for _ in range(4)]
        owners.update(shard_of(q, 2) for q in questions)
        reasonings = [f"r{int(i)}" for i in rng.integers(0, 30, len(questions))]
        correct = rng.random(len(questions)) < 0.5
        want = single.score_and_insert(questions, reasonings, correct)
        batch = primary.prepare(questions, reasonings, correct)
        got = primary.finish(batch, primary.raw_scores(batch, [peer.lookup_then_insert(batch)]))
        np.testing.assert_allclose(got[0], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert owners == {0, 1}
    assert primary.shard.success.num_keys + peer.success.num_keys >= single.shard.success.num_keys


def test_bad_inputs_name_the_problem():
    rewarder, _ = make()
    with pytest.raises(ValueError, match=r"reasonings \(1\)"):
        rewarder.score_and_insert(["qA", "qA"], ["a"], [1, 1])
    with pytest.raises(TypeError, match=r"reasonings\[0\]"):
        rewarder.score_and_insert(["qA"], [None], [1])
    with pytest.raises(ValueError, match=r"correct\[0\] is NaN"):
        rewarder.score_and_insert(["qA"], ["a"], [float("nan")])
    with pytest.raises(ValueError, match="memory.k"):
        MemorySettings.default(k=0)
    with pytest.raises(ValueError, match="memory.mode"):
        MemorySettings.default(mode="papr")
    with pytest.raises(ValueError, match="unknown memory setting"):
        MemorySettings.from_dict({"kk": 1})
    with pytest.raises(ValueError, match="cannot be sharded"):
        MemoryShard(MemorySettings.reference(), 3, shard_index=0, num_shards=2)


def test_key_index_pads_when_k_exceeds_size():
    index = KeyIndex(dim=3, capacity=10)
    sims, slots = index.search(np.ones((1, 3), np.float32), 2)
    assert slots.tolist() == [[-1, -1]] and np.isneginf(sims).all()
    index.write(0, np.float32([1, 0, 0]))
    sims, slots = index.search(np.float32([[1, 0, 0]]), 3)
    assert slots.tolist() == [[0, -1, -1]] and sims[0, 0] == pytest.approx(1.0)


@pytest.mark.gpu
def test_gpu_index_matches_cpu():
    assert gpu_available(), "a CUDA GPU is visible to torch but not to FAISS (install faiss-gpu)"
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((3000, 64)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = keys[:50] + 0.1 * rng.standard_normal((50, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cpu, gpu = KeyIndex(64, 4000, "cpu"), KeyIndex(64, 4000, "cuda")
    for index in (cpu, gpu):
        index.write_all(keys[:2000])
        for slot in range(2000, 3000):
            index.write(slot, keys[slot])
        index.write(5, keys[2999])  # an overwrite in place
    (cs, ci), (gs, gi) = cpu.search(queries, 10), gpu.search(queries, 10)
    np.testing.assert_allclose(gs, cs, atol=1e-5)
    assert (gi == ci).mean() > 0.99  # only near-ties may swap
    settings = MemorySettings.default(k=2, warmup=0, capacity_keys=8, embedder="hash")
    results = []
    for device in ("cpu", "cuda"):
        rewarder = MemoryRewarder(MemorySettings(**{**settings.to_dict(), "device": device}), HashingEmbedder(32))
        out = []
        for step in range(6):
            questions = [f"q{(step + j) % 11}" for j in range(4) for _ in range(3)]
            reasonings = [f"r{(step * 7 + i) % 17}" for i in range(12)]
            out.append(rewarder.score_and_insert(questions, reasonings, [i % 3 == 0 for i in range(12)]))
        results.append(out)
    for (ce, cx), (ge, gx) in zip(*results):
        np.testing.assert_allclose(ge, ce, atol=1e-5)
        np.testing.assert_allclose(gx, cx, atol=1e-5)
