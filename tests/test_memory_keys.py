"""Reference mode merges questions with equal token ids into one key, as the official code's
one-text-at-a-time encoder does; paper mode keeps them apart."""

from __future__ import annotations

import pytest

from memrl.memory.rewarder import MemoryRewarder
from memrl.memory.settings import MemorySettings


@pytest.fixture(scope="module")
def minilm():
    from memrl.memory.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="torch", batch_size=8)


def test_case_and_spacing_variants_share_a_key_in_reference_mode(minilm):
    a, b = "Tom has 3 apples. How many?", "tom has  3 apples. how many?"
    assert minilm.token_keys([a]) == minilm.token_keys([b])
    long = "Three boxes of twelve pens make thirty-six; seven were sold, so twenty-nine remain. " * 3
    steps = [([a, "Other question?"], [long, "z"]), ([b], ["y"])]  # different padding per batch
    counts = {}
    for mode, settings in (("reference", MemorySettings.reference()), ("paper", MemorySettings.default(mode="paper"))):
        rewarder = MemoryRewarder(settings, embedder=minilm)
        for step, (questions, reasonings) in enumerate(steps):
            rewarder.score_and_insert(questions, reasonings, [False] * len(questions), step=step)
        counts[mode] = rewarder.shard.failure.num_keys
    assert counts["reference"] == 2
    assert counts["paper"] == 3  # batched embeddings of the two texts differ by ~1e-7
