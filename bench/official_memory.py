"""A faithful re-implementation of the official Memory-R code's per-sample memory path.

Reproduces, response by response, what the official ``FastKNNMemory`` and its two reward
functions do (public repository thaihungle/Memory-R, ``rewards/ir_knn_st.py`` and
``run_gsm8k.py``), so the benchmark can time it and the tests can check memrl's ``reference``
mode against it:

- one encoder call per text: an insert encodes question and reasoning, a score encodes them
  again (the question once more inside retrieval), in each memory separately;
- an ``IndexFlatL2`` over the keys, one search per insert and per score;
- insert before score; a new question merges into the nearest key only if that key's
  embedding is bit-identical; FIFO of ``max_values`` values per key;
- exploit: ``1 − s`` with ``s`` the window-min-max-normalised distance to the centroid (no
  epsilon; a flat window returns the raw distance; an empty memory returns 1.0 → reward 0);
- explore: 0 while fewer than ``explore_phase`` keys are stored; 1.0 for an empty memory; a
  flat window returns 0; otherwise the normalised novelty times an annealing factor that is
  multiplied by ``anneal_rate`` after each such value; its cosine divides by a broadcast
  [v, v] matrix of norms, as the original does;
- one normalisation window per memory, shared by all questions.

Not reproduced (the official code's two bugs, docs/method.md "Episodic memory"): every
completion is keyed by its own question, not the first prompt's; eviction drops the oldest key
together with its values (the original re-indexed the key list but not the value dict).
Eviction still rebuilds the FAISS index from the remaining keys, as the original does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import faiss
import numpy as np


class OfficialMemory:
    """One memory (the official ``FastKNNMemory``) with an injected single-text encoder."""

    def __init__(
        self,
        encode_text: Callable[[str], np.ndarray],
        dim: int,
        max_keys: int = 10_000,
        max_values: int = 100,
        history_size: int = 100,
        anneal_rate: float = 1.0,
        explore_phase: int = 0,
    ):
        self.encode_text = encode_text
        self.index = faiss.IndexFlatL2(dim)
        self.keys: list[np.ndarray] = []
        self.values: list[list[tuple[str, np.ndarray]]] = []  # aligned with ``keys``
        self.max_keys = max_keys
        self.max_values = max_values
        self.novelty_history: deque = deque(maxlen=history_size)
        self.anneal_factor = 1.0
        self.anneal_rate = anneal_rate
        self.explore_phase = explore_phase

    def load_contents(self, keys: np.ndarray, values: list[list[tuple[str, np.ndarray]]]) -> None:
        """Start from given keys ([K, dim], oldest first) and their value lists (benchmark)."""
        self.keys = [k for k in np.asarray(keys, dtype=np.float32)]
        self.values = values
        self.index.reset()
        if self.keys:
            self.index.add(np.array(self.keys))

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.encode_text(text), dtype=np.float32)

    def insert_pair(self, question: str, reasoning: str) -> None:
        key = self._encode(question)
        value = self._encode(reasoning)
        if self.keys:
            _, found = self.index.search(key.reshape(1, -1), 1)
            nearest = int(found[0][0])
            if 0 <= nearest < len(self.keys) and np.array_equal(self.keys[nearest], key):
                if len(self.values[nearest]) >= self.max_values:
                    self.values[nearest].pop(0)
                self.values[nearest].append((reasoning, value))
                return
            if len(self.keys) >= self.max_keys:
                self.keys.pop(0)
                self.values.pop(0)
                self.index.reset()
                self.index.add(np.array(self.keys))
        self.index.add(key.reshape(1, -1))
        self.keys.append(key)
        self.values.append([(reasoning, value)])

    def retrieve(self, question: str, k: int) -> list[list[tuple[str, np.ndarray]]]:
        query = self._encode(question).reshape(1, -1)
        _, found = self.index.search(query, k)
        return [self.values[i] for i in found[0] if i != -1]

    def _window(self, value: float) -> tuple[float, float]:
        self.novelty_history.append(value)
        return min(self.novelty_history), max(self.novelty_history)

    def novelty_score_mean(self, question: str, reasoning: str, k: int) -> float | None:
        if len(self.keys) < self.explore_phase:
            return None
        retrieved = self.retrieve(question, k)
        value = self._encode(reasoning)
        stored = [emb for entries in retrieved for _, emb in entries]
        if not stored:
            return 1.0
        centroid = np.mean(np.array(stored), axis=0)
        novelty = np.linalg.norm(value - centroid)
        low, high = self._window(novelty)
        if high == low:
            return novelty
        return (novelty - low) / (high - low)

    def novelty_score_max(self, question: str, reasoning: str, k: int) -> float | None:
        if len(self.keys) < self.explore_phase:
            return None
        retrieved = self.retrieve(question, k)
        value = self._encode(reasoning)
        stored = [emb for entries in retrieved for _, emb in entries]
        if not stored:
            return 1.0
        stored_arr = np.array(stored)
        value = value.reshape(1, -1)
        similarity = np.dot(stored_arr, value.T) / (
            np.linalg.norm(stored_arr, axis=1) * np.linalg.norm(value)
        )
        novelty = 1 - np.max(similarity)
        low, high = self._window(novelty)
        if high == low:
            return 0.0
        score = self.anneal_factor * ((novelty - low) / (high - low))
        self.anneal_factor *= self.anneal_rate
        return score


def official_step(
    exploit_memory: OfficialMemory,
    explore_memory: OfficialMemory | None,
    questions: Sequence[str],
    reasonings: Sequence[str],
    correct: Sequence[bool],
    k: int,
) -> tuple[list[float], list[float]]:
    """The official reward functions for one batch, each completion keyed by its own question:
    exploit (``novelty_reward_func_exploit``) then explore (``novelty_reward_func_explore``)."""
    exploit, explore = [], []
    for question, reasoning, ok in zip(questions, reasonings, correct):
        if ok:
            exploit_memory.insert_pair(question, reasoning)
        s = exploit_memory.novelty_score_mean(question, reasoning, k)
        exploit.append(float(1 - s) if s is not None else 0.0)
    for question, reasoning, ok in zip(questions, reasonings, correct):
        if explore_memory is None:
            explore.append(0.0)
            continue
        if not ok:
            explore_memory.insert_pair(question, reasoning)
        s = explore_memory.novelty_score_max(question, reasoning, k)
        explore.append(float(s) if s is not None else 0.0)
    return exploit, explore
