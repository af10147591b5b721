"""The success and failure memories of one shard, and the two scoring orders.

``paper`` order (:meth:`MemoryShard.lookup_then_insert`): every response of the step is looked
up against the memory as it was before the step, then the step's responses are inserted. The
lookup returns per-question partial results (top-K similarities, value sums and counts, and
per-response best cosines per key) so that several shards, each holding part of the questions,
can be merged exactly by :func:`merge_partials`.

``reference`` order (:meth:`MemoryShard.insert_then_score`): one response at a time in batch
order, insert it, then score it — the official code's order. Lookups are cached per question
until the set of keys changes, so the results equal one search per response.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from memrl.memory.embedder import StepEmbeddings
from memrl.memory.episodic import EpisodicMemory, MemoryArrays
from memrl.memory.index import check_gpu_k
from memrl.memory.rewards import (
    centroid_distance,
    explore_active,
    max_cosine,
    reference_distance,
    reference_novelty,
)
from memrl.memory.settings import MemorySettings


@dataclass
class EncodedStep(StepEmbeddings):
    """One step's responses as the memories take them: their embeddings (``Q`` distinct
    questions, ``n`` responses; see :class:`StepEmbeddings`), outcomes and texts."""

    success: np.ndarray  # [n] bool, True → success memory, False → failure memory
    value_texts: list[str]  # [n] reasoning texts (truncated when stored)
    step: int  # 0-based training step


@dataclass
class PartialLookup:
    """What one shard's memories say about a step before it inserted anything."""

    success_sims: np.ndarray  # [Q, k] float32, -inf where fewer than k keys
    success_counts: np.ndarray  # [Q, k] int64, values held by each of those keys
    success_sums: np.ndarray  # [Q, k, dim] float32, sum of those values
    failure_sims: np.ndarray  # [Q, k] float32, -inf padding (all -inf without explore)
    failure_maxcos: np.ndarray  # [n, k] float32, best cosine of response to each key's values
    failure_keys: int  # keys in this shard's failure memory before the step


@dataclass
class RawScores:
    """Un-normalised rewards of a step's responses, in batch order."""

    distance: np.ndarray  # [n] float32 exploit distance, NaN where success retrieval is empty
    novelty: np.ndarray  # [n] float32 explore novelty, NaN where empty (or not needed)
    failure_keys: np.ndarray  # [n] int64, failure-memory keys when each response was scored


def shard_of(question: str, num_shards: int) -> int:
    """Stable shard of a question text (same in every process, unlike ``hash``)."""
    if num_shards == 1:
        return 0
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


class MemoryShard:
    """Success memory and (for Memory-R+) failure memory of the questions this shard owns."""

    def __init__(
        self,
        settings: MemorySettings,
        dim: int,
        shard_index: int = 0,
        num_shards: int = 1,
        device: str = "cpu",
    ):
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} outside 0..{num_shards - 1}")
        if num_shards > 1 and settings.mode == "reference":
            raise ValueError(
                "memory.mode = 'reference' scores one response at a time against the whole "
                "memory and cannot be sharded; use num_shards = 1"
            )
        if device == "cuda":
            check_gpu_k(settings.k)
        self.settings = settings
        self.dim = dim
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.device = device
        self.success = self._new_memory()
        self.failure = self._new_memory() if settings.use_explore else None

    @property
    def capacity_keys(self) -> int:
        """Keys this shard may hold: its share of ``capacity_keys``. Each shard evicts its own
        oldest question, so with several shards eviction is oldest-first per shard."""
        return -(-self.settings.capacity_keys // self.num_shards)

    def _new_memory(self) -> EpisodicMemory:
        s = self.settings
        return EpisodicMemory(
            self.dim, self.capacity_keys, s.capacity_values, s.value_text_chars, self.device
        )

    # ---- paper order -------------------------------------------------------------------
    def lookup_then_insert(self, batch: EncodedStep) -> PartialLookup:
        """Look the whole step up against the current memories, then insert the responses
        whose question this shard owns."""
        k = self.settings.k
        s_sims, s_slots = self.success.search(batch.question_vecs, k)
        num_q, n = len(batch.questions), len(batch.question_index)
        counts = np.zeros((num_q, k), dtype=np.int64)
        sums = np.zeros((num_q, k, self.dim), dtype=np.float32)
        for q, j in zip(*np.nonzero(s_slots >= 0)):
            values = self.success.slot_values(int(s_slots[q, j]))
            counts[q, j] = values.shape[0]
            sums[q, j] = values.sum(axis=0)
        f_sims = np.full((num_q, k), -np.inf, dtype=np.float32)
        maxcos = np.full((n, k), np.nan, dtype=np.float32)
        failure_keys = 0
        if self.failure is not None:
            failure_keys = self.failure.num_keys
            f_sims, f_slots = self.failure.search(batch.question_vecs, k)
            for q, rows in _rows_by_question(batch.question_index, num_q):
                responses = batch.response_vecs[rows]
                for j in np.nonzero(f_slots[q] >= 0)[0]:
                    values = self.failure.slot_values(int(f_slots[q, j]))
                    maxcos[rows, j] = max_cosine(responses, values)
        self._insert_owned(batch)
        return PartialLookup(
            success_sims=s_sims,
            success_counts=counts,
            success_sums=sums,
            failure_sims=f_sims,
            failure_maxcos=maxcos,
            failure_keys=failure_keys,
        )

    def _insert_owned(self, batch: EncodedStep) -> None:
        for i, q in enumerate(batch.question_index):
            question = batch.questions[q]
            if shard_of(question, self.num_shards) != self.shard_index:
                continue
            memory = self.success if batch.success[i] else self.failure
            if memory is not None:
                memory.insert(
                    question, batch.question_vecs[q], batch.response_vecs[i], batch.value_texts[i]
                )

    # ---- reference order ---------------------------------------------------------------
    def insert_then_score(self, batch: EncodedStep) -> RawScores:
        """For each response in order: insert it into its memory, then score it against both
        memories as they now are (the official code's order)."""
        n = len(batch.question_index)
        distance = np.full(n, np.nan, dtype=np.float32)
        novelty = np.full(n, np.nan, dtype=np.float32)
        failure_keys = np.zeros(n, dtype=np.int64)
        success_cache: dict[int, tuple[int, list[int]]] = {}
        failure_cache: dict[int, tuple[int, list[int]]] = {}
        for i, q in enumerate(batch.question_index):
            q = int(q)
            response = batch.response_vecs[i]
            memory = self.success if batch.success[i] else self.failure
            if memory is not None:
                memory.insert(batch.questions[q], batch.question_vecs[q], response, batch.value_texts[i])
            values = self._union(self.success, success_cache, q, batch.question_vecs)
            if values is not None:
                distance[i] = reference_distance(response, values)
            if self.failure is None:
                continue
            failure_keys[i] = self.failure.num_keys
            if not explore_active(batch.step, self.failure.num_keys, self.settings):
                continue
            values = self._union(self.failure, failure_cache, q, batch.question_vecs)
            if values is not None:
                novelty[i] = reference_novelty(response, values)
        return RawScores(distance=distance, novelty=novelty, failure_keys=failure_keys)

    def _union(
        self,
        memory: EpisodicMemory,
        cache: dict[int, tuple[int, list[int]]],
        q: int,
        question_vecs: np.ndarray,
    ) -> np.ndarray | None:
        """Values of the k nearest keys of question row ``q``, nearest key first, each key's
        values oldest first ([v, dim]); None when the memory is empty."""
        hit = cache.get(q)
        if hit is None or hit[0] != memory.key_version:
            _, slots = memory.search(question_vecs[q : q + 1], self.settings.k)
            hit = (memory.key_version, [int(s) for s in slots[0] if s >= 0])
            cache[q] = hit
        if not hit[1]:
            return None
        return np.concatenate([memory.slot_values(s, ordered=True) for s in hit[1]])

    # ---- contents ----------------------------------------------------------------------
    def sizes(self) -> dict[str, float]:
        out = {
            "success_keys": float(self.success.num_keys),
            "success_values": float(self.success.num_values),
        }
        if self.failure is not None:
            out["failure_keys"] = float(self.failure.num_keys)
            out["failure_values"] = float(self.failure.num_values)
        return out

    def memories(self) -> dict[str, EpisodicMemory]:
        """The memories by name (``success``, and ``failure`` when explore is on)."""
        out = {"success": self.success}
        if self.failure is not None:
            out["failure"] = self.failure
        return out

    def to_arrays(self) -> dict[str, MemoryArrays]:
        return {name: memory.to_arrays() for name, memory in self.memories().items()}

    def load_arrays(self, arrays: dict[str, MemoryArrays]) -> None:
        """Replace both memories by ``arrays`` (built fully before anything is replaced)."""
        expected = set(self.memories())
        if set(arrays) != expected:
            raise ValueError(
                f"snapshot holds memories {sorted(arrays)}, settings need {sorted(expected)}"
            )
        s = self.settings
        built = {
            name: EpisodicMemory.from_arrays(
                a, self.capacity_keys, s.capacity_values, s.value_text_chars, self.device
            )
            for name, a in arrays.items()
        }
        self.success = built["success"]
        self.failure = built.get("failure")


def _rows_by_question(question_index: np.ndarray, num_q: int) -> list[tuple[int, np.ndarray]]:
    """(question row, response rows) for every question with responses."""
    order = np.argsort(question_index, kind="stable")
    bounds = np.searchsorted(question_index[order], np.arange(num_q + 1))
    return [(q, order[bounds[q] : bounds[q + 1]]) for q in range(num_q) if bounds[q + 1] > bounds[q]]


def merge_partials(parts: list[PartialLookup], batch: EncodedStep, k: int) -> RawScores:
    """Exact global top-K over the shards' partial lookups, then the raw rewards.

    Picks the K most similar keys per question among all shards' candidates; the centroid is
    the sum of their values over their count; the novelty is 1 − the best cosine to any of
    their values.
    """
    qi = batch.question_index
    s_sims = np.concatenate([p.success_sims for p in parts], axis=1)
    order = np.argsort(-s_sims, axis=1, kind="stable")[:, :k]
    chosen = np.take_along_axis(s_sims, order, axis=1) > -np.inf
    counts = np.take_along_axis(np.concatenate([p.success_counts for p in parts], axis=1), order, axis=1)
    sums = np.take_along_axis(
        np.concatenate([p.success_sums for p in parts], axis=1), order[:, :, None], axis=1
    )
    total = np.where(chosen, counts, 0).sum(axis=1)
    centroid_sum = np.where(chosen[:, :, None], sums, 0.0).sum(axis=1, dtype=np.float32)
    has = total > 0
    centroids = centroid_sum / np.maximum(total, 1)[:, None].astype(np.float32)
    distance = centroid_distance(batch.response_vecs, centroids[qi])
    distance[~has[qi]] = np.nan

    f_sims = np.concatenate([p.failure_sims for p in parts], axis=1)
    f_order = np.argsort(-f_sims, axis=1, kind="stable")[:, :k]
    f_chosen = np.take_along_axis(f_sims, f_order, axis=1) > -np.inf
    maxcos_all = np.concatenate([p.failure_maxcos for p in parts], axis=1)
    picked = np.take_along_axis(maxcos_all, f_order[qi], axis=1)
    picked = np.where(f_chosen[qi] & ~np.isnan(picked), picked, -np.inf)
    best = picked.max(axis=1)
    novelty = np.where(best > -np.inf, 1.0 - best, np.nan).astype(np.float32)
    failure_keys = sum(p.failure_keys for p in parts)
    return RawScores(
        distance=distance.astype(np.float32),
        novelty=novelty,
        failure_keys=np.full(len(qi), failure_keys, dtype=np.int64),
    )
