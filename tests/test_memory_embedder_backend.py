"""The ONNX backend of the sentence encoder: same embeddings as torch, cached atomic export,
clean fallback to torch."""

import logging
import sys

import numpy as np
import pytest

from memrl.memory import MemorySettings, SentenceTransformerEmbedder, make_embedder
from memrl.memory import embedder as embedder_module

TEXTS = [
    "",
    "x",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Let's think step by step. 48 / 2 = 24 clips in May.\nSo 48 + 24 = 72 clips. Done. (3)",
    "Ünïcödé, emoji 🙂 and symbols: ∑ x² ≤ 10 → 42 %",
    # longer than the model's 256-token limit: truncated identically by both backends
    "The farmer counts 17 cows, then 23 sheep, then adds them up carefully. " * 40,
]


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(device="cpu", batch_size=4, backend="onnx", cache_dir=onnx_cache)


def test_onnx_embeddings_equal_torch(onnx_embedder):
    assert onnx_embedder.backend == "onnx"
    got = onnx_embedder.encode(TEXTS)  # batches of 4 with padding, long text truncated
    want = onnx_embedder.encode_torch(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # one text alone (no padding) gives its row of the batched call
    alone = onnx_embedder.encode([TEXTS[2]])
    assert np.abs(alone[0] - got[2]).max() < 1e-5
    assert onnx_embedder.encode([]).shape == (0, 384)


def test_export_is_cached_and_atomic(onnx_embedder, onnx_cache, monkeypatch):
    key = embedder_module.onnx_export_key(onnx_embedder.model)
    # exactly the named file: no temporary file left behind
    assert sorted(p.name for p in onnx_cache.iterdir()) == [f"{key}.onnx"]

    def no_export(model, path):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(embedder_module, "export_onnx", no_export)
    again = SentenceTransformerEmbedder(device="cpu", backend="onnx", cache_dir=onnx_cache)
    assert again.backend == "onnx"
    np.testing.assert_array_equal(again.encode(TEXTS[2:4]), onnx_embedder.encode(TEXTS[2:4]))


def test_unreadable_cached_file_is_exported_again(onnx_embedder, tmp_path):
    key = embedder_module.onnx_export_key(onnx_embedder.model)
    (tmp_path / f"{key}.onnx").write_bytes(b"not an onnx file")
    fresh = SentenceTransformerEmbedder(device="cpu", backend="onnx", cache_dir=tmp_path)
    assert fresh.backend == "onnx"
    assert (tmp_path / f"{key}.onnx").stat().st_size > 1_000_000
    assert np.abs(fresh.encode(TEXTS[2:4]) - onnx_embedder.encode_torch(TEXTS[2:4])).max() < 1e-4


def test_export_differing_from_torch_is_refused(onnx_embedder, onnx_cache, monkeypatch, caplog):
    monkeypatch.setattr(embedder_module, "ONNX_TOLERANCE", -1.0)  # no difference passes
    with caplog.at_level(logging.WARNING, logger="memrl.memory.embedder"):
        emb = SentenceTransformerEmbedder(device="cpu", backend="onnx", cache_dir=onnx_cache)
    assert emb.backend == "torch"
    assert any("differs from torch" in r.getMessage() for r in caplog.records)


def test_missing_onnxruntime_falls_back_to_torch(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="memrl.memory.embedder"):
        emb = SentenceTransformerEmbedder(device="cpu", backend="onnx", cache_dir=tmp_path)
    assert emb.backend == "torch"
    assert any("onnxruntime" in r.getMessage() and "using torch" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []  # nothing exported
    np.testing.assert_array_equal(emb.encode(TEXTS[2:4]), emb.encode_torch(TEXTS[2:4]))


def test_backend_setting_is_validated():
    assert MemorySettings.default().embedder_backend == "onnx"
    assert MemorySettings.default(embedder_backend="torch").embedder_backend == "torch"
    with pytest.raises(ValueError, match="memory.embedder_backend"):
        MemorySettings.default(embedder_backend="tensorflow")
    with pytest.raises(ValueError, match="memory.embedder_backend"):
        make_embedder("hash", backend="tensorflow")
