"""The memory with the real all-MiniLM-L6-v2 encoder (offline package), loaded once."""

from __future__ import annotations

import numpy as np
import pytest

from bench.official_memory import OfficialMemory, official_step
from memrl.memory import MemoryRewarder, MemorySettings, SentenceTransformerEmbedder

QUESTION_A = (
    "Natalia sold clips to 48 of her friends in April, and then half as many in May. "
    "How many clips did she sell in total?"
)
QUESTION_B = "Weng earns $12 an hour for babysitting. Yesterday she babysat for 50 minutes. How much did she earn?"
QUESTION_C = (
    "James writes a 3-page letter to 2 different friends twice a week. "
    "How many pages does he write a year?"
)
QUESTION_D = (
    "Betty needs $100 for a wallet. She has half of it, her parents give $15 and her "
    "grandparents twice that. How much more does she need?"
)
RIGHT_A = "In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips."
RIGHT_A2 = "Half of 48 is 24, so May had 24 sales; adding April's 48 gives 72 clips."
WRONG_A = "She sold 48 clips in April and 48 * 2 = 96 in May, so 144 clips."
WRONG_A2 = "The answer is 48 because she sold 48 clips."
RIGHT_B = "She earns 12 / 60 = 0.2 dollars per minute, so 0.2 * 50 = 10 dollars."
WRONG_B = "12 times 50 is 600 dollars."
WRONG_B2 = "An hour is 100 minutes, so 12 * 0.5 = 6 dollars."
RIGHT_C = "Each week he writes 3 * 2 * 2 = 12 pages, so 12 * 52 = 624 pages a year."
WRONG_C = "He writes 3 * 2 = 6 pages a year."
RIGHT_D = "She has 50, gets 15 and 30, so 95; she needs 100 - 95 = 5 more dollars."
WRONG_D = "She needs 100 - 50 = 50 dollars."
UNRELATED = "The mitochondria is the powerhouse of the cell."


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(device="cpu")


def test_embeddings_unit_length_and_batched_equals_single(minilm):
    texts = [RIGHT_A, WRONG_A, QUESTION_A]
    batch = minilm.encode(texts)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    single = np.stack([minilm.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_paper_rewards_follow_meaning(minilm):
    settings = MemorySettings.default(k=1, warmup=0, embedder="all-MiniLM-L6-v2", device="cpu")
    rewarder = MemoryRewarder(settings, minilm)
    rewarder.score_and_insert(
        [QUESTION_A] * 2 + [QUESTION_B] * 2, [RIGHT_A, WRONG_A, RIGHT_B, WRONG_B], [1, 0, 1, 0]
    )
    batch = rewarder.prepare([QUESTION_A] * 3, [UNRELATED, RIGHT_A2, WRONG_A], [0, 1, 0])
    raw = rewarder.raw_scores(batch)
    # a paraphrase of the stored correct reasoning is nearer the success centroid than an
    # unrelated text; repeating the stored wrong reasoning has no novelty at all
    assert raw.distance[1] < raw.distance[0]
    assert raw.novelty[2] == pytest.approx(0.0, abs=1e-6)
    assert raw.novelty[2] < raw.novelty[1] < raw.novelty[0]
    exploit, _ = rewarder.finish(batch, raw)
    assert exploit[0] == 0.0 and exploit[1] == pytest.approx(1.0)  # first in window; then the max


def test_reference_mode_matches_official_with_real_encoder(minilm):
    """Official path encodes every text alone; memrl batches. Their embeddings differ by
    ~1e-7, which is harmless once each window holds a clearly non-zero value. The sequence is
    ordered so that it does: the first response scored against a memory after a self-match is
    never another self-match (a window holding only self-match residues normalises rounding
    noise, in the official code as in its reproduction)."""
    settings = MemorySettings.reference(
        k=1, capacity_keys=3, capacity_values=2, warmup=1, embedder="all-MiniLM-L6-v2", device="cpu"
    )
    steps = [
        ([QUESTION_A] * 4, [RIGHT_A, WRONG_A, RIGHT_A2, WRONG_A2], [1, 0, 1, 0]),
        (
            [QUESTION_B] * 3 + [QUESTION_C] * 3,
            [WRONG_B, RIGHT_B, WRONG_B2, RIGHT_C, WRONG_C, UNRELATED],
            [0, 1, 0, 1, 0, 0],
        ),
        ([QUESTION_D] * 2 + [QUESTION_A] * 2, [RIGHT_D, WRONG_D, WRONG_A, RIGHT_A], [1, 0, 0, 1]),
    ]

    def encode_one(text: str) -> np.ndarray:  # the official call: one text, no re-normalising
        return minilm.model.encode(text, convert_to_numpy=True).astype(np.float32)

    ours = MemoryRewarder(settings, minilm)
    exploit_memory = OfficialMemory(encode_one, 384, 3, 2, settings.window, 1.0, 0)
    explore_memory = OfficialMemory(encode_one, 384, 3, 2, settings.window, 1.0, settings.warmup)
    for questions, reasonings, correct in steps:
        exploit, explore = ours.score_and_insert(questions, reasonings, correct)
        want_exploit, want_explore = official_step(
            exploit_memory, explore_memory, questions, reasonings, correct, 1
        )
        np.testing.assert_allclose(exploit, want_exploit, atol=1e-5)
        np.testing.assert_allclose(explore, want_explore, atol=1e-5)
    assert ours.shard.failure.num_keys == 3 and len(explore_memory.keys) == 3  # an eviction happened


def test_benchmark_runs_and_reports_its_figures(tmp_path):
    """bench/memory_bench.py end to end at toy size (real encoder, real texts). Which path is
    faster is the benchmark's finding, not a unit test's: timings flake on a loaded machine,
    so this checks the work each path does and that the figures are consistent."""
    import json

    from bench.memory_bench import main

    out = tmp_path / "bench.json"
    figures = main([
        "--keys", "300", "--values-per-key", "5", "--questions", "2", "--completions", "3",
        "--rounds", "3", "--scale-keys", "2000", "--scale-repeats", "3", "--json", str(out),
    ])
    written = json.loads(out.read_text())
    assert written["design_speedup"]["median"] == pytest.approx(figures["design_speedup"]["median"])
    # The headline compares the two designs on one encoder backend; the ONNX gain is its own figure.
    rows = written["rows"]
    assert written["design_speedup"]["sides"] == ["official", "memrl_paper_torch"]
    assert rows["official"]["encoder_backend"] == rows["memrl_paper_torch"]["encoder_backend"] == "torch"
    assert written["design_speedup"]["same_backend"] is True
    assert written["onnx_gain"]["sides"] == ["memrl_paper_torch", "memrl_paper_onnx"]
    assert written["design_and_onnx_speedup"]["sides"] == ["official", "memrl_paper_onnx"]
    assert rows["memrl_reference"]["encoder_backend"] == "torch"
    # Counted from the texts each path handed its encoder: memrl encodes a step's 2 questions
    # and 6 reasonings once each; the official path encodes texts again per memory and per call.
    work = written["encoder_work"]
    assert work["memrl_texts_per_step"] == 8
    assert work["official_texts_per_step"] > work["memrl_texts_per_step"]
    assert work["official_tokens_per_step"] > work["memrl_tokens_per_step"]
    # Three timed rounds per row (the warm-up round dropped); each ratio is taken round by round
    # and summarised as its median and range.
    for row in rows.values():
        assert len(row["times_s"]) == 3 and row["seconds"]["median"] > 0
        assert row["seconds"]["min"] <= row["seconds"]["median"] <= row["seconds"]["max"]
    for name, top, bottom in [("design_speedup", "official", "memrl_paper_torch"),
                              ("onnx_gain", "memrl_paper_torch", "memrl_paper_onnx"),
                              ("design_and_onnx_speedup", "official", "memrl_paper_onnx"),
                              ("reference_mode_speedup", "official", "memrl_reference")]:
        want = [t / b for t, b in zip(rows[top]["times_s"], rows[bottom]["times_s"])]
        ratio = written[name]
        assert ratio["per_round"] == pytest.approx(want)
        assert (ratio["min"], ratio["median"], ratio["max"], ratio["n"]) == pytest.approx(
            (min(want), sorted(want)[1], max(want), 3))
    speedup = written["design_speedup"]["median"]
    assert speedup == pytest.approx(work["work_ratio"] * written["per_token_speedup"])
    assert [(row["keys"], row["batch_queries"]) for row in written["search_scaling"]] == [(2000, 2)]
