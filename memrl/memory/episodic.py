"""One episodic memory: question keys, each holding a bounded FIFO of response embeddings.

Keys occupy slots of a :class:`~memrl.memory.index.KeyIndex`. Slots fill in order
``0, 1, ...``; once ``capacity_keys`` are stored, a new question takes the slot of the oldest
one, so the slot to evict next simply cycles (``next_evict``). A question joins an existing
key when its text, or its embedding bit for bit, is already stored (the official code merges on
bit-identical embeddings; identical texts get identical cached embeddings, so the text test
only makes this robust to cache eviction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memrl.memory.index import KeyIndex

_INITIAL_VALUE_ROWS = 16


@dataclass
class MemoryArrays:
    """Contents of one memory in plain arrays (the snapshot layout). ``K`` keys, ``V`` values."""

    keys: np.ndarray  # [K, dim] float32, slot order
    values: np.ndarray  # [V, dim] float32, slot by slot, oldest value first
    value_counts: np.ndarray  # [K] int64, values of each slot (sum = V)
    questions: list[str]  # [K] question text of each slot
    value_texts: list[list[str]]  # [K][count] stored reasoning text, oldest first
    next_evict: int  # slot that the next new question replaces once full


class EpisodicMemory:
    """Up to ``capacity_keys`` questions × ``capacity_values`` responses each."""

    def __init__(
        self,
        dim: int,
        capacity_keys: int,
        capacity_values: int,
        value_text_chars: int = 400,
        device: str = "cpu",
    ):
        self.dim = dim
        self.capacity_keys = capacity_keys
        self.capacity_values = capacity_values
        self.value_text_chars = value_text_chars
        self.index = KeyIndex(dim, capacity_keys, device)
        self._questions: list[str] = []
        self._key_bytes: list[bytes] = []  # per slot: the key as raw float32 bytes
        self._slot_by_text: dict[str, int] = {}
        self._slot_by_key: dict[bytes, int] = {}
        self._values: list[np.ndarray] = []  # per slot: [rows, dim], rows grow up to capacity
        self._texts: list[list[str]] = []
        self._counts: list[int] = []
        self._heads: list[int] = []  # per slot: ring position of the oldest value once full
        self.next_evict = 0
        self.key_version = 0  # bumped whenever the set of keys changes (invalidates lookups)
        self.num_values = 0

    @property
    def num_keys(self) -> int:
        return self.index.size

    def insert(self, question: str, key_vec: np.ndarray, value_vec: np.ndarray, value_text: str) -> int:
        """Append one response to its question's FIFO, creating (or recycling) a key if the
        question is new. Returns the slot."""
        key_bytes = np.ascontiguousarray(key_vec, dtype=np.float32).tobytes()
        slot = self._slot_by_text.get(question)
        if slot is None:
            slot = self._slot_by_key.get(key_bytes)
        if slot is None:
            slot = self._new_key(question, key_vec, key_bytes)
        self._push_value(slot, value_vec, value_text[: self.value_text_chars])
        return slot

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored questions: sims [Q, k] (``-inf`` padding), slots [Q, k]
        (``-1`` padding)."""
        return self.index.search(queries, k)

    def slot_values(self, slot: int, ordered: bool = False) -> np.ndarray:
        """The stored response embeddings of ``slot``, [count, dim]. ``ordered`` returns them
        oldest first (a copy once the FIFO has wrapped); otherwise storage order (a view)."""
        count, head, rows = self._counts[slot], self._heads[slot], self._values[slot]
        if not ordered or head == 0:
            return rows[:count]
        return np.concatenate([rows[head:count], rows[:head]])

    def slot_texts(self, slot: int) -> list[str]:
        """Stored reasoning texts of ``slot``, oldest first."""
        head, texts = self._heads[slot], self._texts[slot]
        return texts[head:] + texts[:head]

    def question(self, slot: int) -> str:
        return self._questions[slot]

    def value_counts(self) -> np.ndarray:
        """[num_keys] int64, responses stored per key."""
        return np.array(self._counts, dtype=np.int64)

    def to_arrays(self) -> MemoryArrays:
        """Contents in the snapshot layout."""
        k = self.num_keys
        values = (
            np.concatenate([self.slot_values(s, ordered=True) for s in range(k)])
            if self.num_values
            else np.zeros((0, self.dim), dtype=np.float32)
        )
        return MemoryArrays(
            keys=self.index.vectors(),
            values=np.ascontiguousarray(values, dtype=np.float32),
            value_counts=self.value_counts(),
            questions=list(self._questions),
            value_texts=[self.slot_texts(s) for s in range(k)],
            next_evict=self.next_evict,
        )

    @classmethod
    def from_arrays(
        cls,
        arrays: MemoryArrays,
        capacity_keys: int,
        capacity_values: int,
        value_text_chars: int = 400,
        device: str = "cpu",
    ) -> EpisodicMemory:
        """Rebuild a memory from :meth:`to_arrays` output; inconsistent arrays raise."""
        keys, values, counts = arrays.keys, arrays.values, arrays.value_counts
        if keys.ndim != 2 or values.ndim != 2 or keys.shape[1] != values.shape[1] and len(values):
            raise ValueError(
                f"keys {keys.shape} and values {values.shape} must be [n, dim] with one dim"
            )
        n = keys.shape[0]
        if n > capacity_keys:
            raise ValueError(f"{n} keys exceed capacity_keys = {capacity_keys}")
        if counts.shape != (n,) or len(arrays.questions) != n or len(arrays.value_texts) != n:
            raise ValueError(
                f"{n} keys but {counts.shape[0]} value counts, {len(arrays.questions)} questions, "
                f"{len(arrays.value_texts)} value-text lists"
            )
        bad_range = n and (counts.min() < 1 or counts.max() > capacity_values)
        if int(counts.sum()) != values.shape[0] or bad_range:
            raise ValueError(
                f"value counts (sum {int(counts.sum())}, range {counts.min() if n else 0}.."
                f"{counts.max() if n else 0}) do not match {values.shape[0]} values with 1.."
                f"{capacity_values} per key"
            )
        if not 0 <= arrays.next_evict < max(capacity_keys, 1):
            raise ValueError(f"next_evict = {arrays.next_evict} outside 0..{capacity_keys - 1}")
        memory = cls(keys.shape[1], capacity_keys, capacity_values, value_text_chars, device)
        memory.index.write_all(np.ascontiguousarray(keys, dtype=np.float32))
        starts = np.concatenate([[0], np.cumsum(counts)])
        for slot in range(n):
            count = int(counts[slot])
            texts = list(arrays.value_texts[slot])
            if len(texts) != count:
                raise ValueError(f"key {slot} has {count} values but {len(texts)} value texts")
            rows_needed = max(count, min(_INITIAL_VALUE_ROWS, capacity_values))
            rows = np.zeros((rows_needed, keys.shape[1]), np.float32)
            rows[:count] = values[starts[slot] : starts[slot + 1]]
            question = arrays.questions[slot]
            memory._questions.append(question)
            memory._slot_by_text[question] = slot
            key_bytes = np.ascontiguousarray(keys[slot], dtype=np.float32).tobytes()
            memory._key_bytes.append(key_bytes)
            memory._slot_by_key[key_bytes] = slot
            memory._values.append(rows)
            memory._texts.append(texts)
            memory._counts.append(count)
            memory._heads.append(0)
        if len(memory._slot_by_text) != n or len(memory._slot_by_key) != n:
            raise ValueError("duplicate question texts or key embeddings: each key must be unique")
        memory.num_values = int(counts.sum())
        memory.next_evict = arrays.next_evict
        return memory

    def _new_key(self, question: str, key_vec: np.ndarray, key_bytes: bytes) -> int:
        if self.num_keys < self.capacity_keys:
            slot = self.num_keys
            self._questions.append(question)
            self._key_bytes.append(key_bytes)
            rows = min(_INITIAL_VALUE_ROWS, self.capacity_values)
            self._values.append(np.zeros((rows, self.dim), np.float32))
            self._texts.append([])
            self._counts.append(0)
            self._heads.append(0)
        else:
            slot = self.next_evict
            self.next_evict = (slot + 1) % self.capacity_keys
            old = self._questions[slot]
            del self._slot_by_text[old]
            del self._slot_by_key[self._key_bytes[slot]]
            self.num_values -= self._counts[slot]
            self._questions[slot] = question
            self._key_bytes[slot] = key_bytes
            self._texts[slot] = []
            self._counts[slot] = 0
            self._heads[slot] = 0
        self.index.write(slot, key_vec)
        self._slot_by_text[question] = slot
        self._slot_by_key[key_bytes] = slot
        self.key_version += 1
        return slot

    def _push_value(self, slot: int, vec: np.ndarray, text: str) -> None:
        rows, count = self._values[slot], self._counts[slot]
        if count < self.capacity_values:
            if count == rows.shape[0]:
                grown = np.zeros((min(self.capacity_values, 2 * count), self.dim), np.float32)
                grown[:count] = rows
                self._values[slot] = rows = grown
            rows[count] = vec
            self._texts[slot].append(text)
            self._counts[slot] = count + 1
            self.num_values += 1
        else:  # full: the oldest value (at head) is overwritten, FIFO
            head = self._heads[slot]
            rows[head] = vec
            self._texts[slot][head] = text
            self._heads[slot] = (head + 1) % self.capacity_values
