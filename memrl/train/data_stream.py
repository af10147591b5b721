"""The training prompt stream: a seeded, resumable order over a task's train split.

Each epoch is a fresh permutation drawn from ``(seed, epoch)``, so the order depends only on the
seed and the position — a resumed run that restores ``state()`` consumes exactly the prompts
the uninterrupted run would have, including across epoch boundaries. :meth:`PromptStream.take`
also says where each prompt came from (its :class:`~memrl.ledger.PromptId`, for the prompt
ledger); ``memrl audit`` replays the stream from the run's config to check the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memrl.ledger import PromptId
from memrl.types import Record

TRAIN_SPLIT = "train"  # the task split the stream hands out


@dataclass
class StreamState:
    epoch: int = 0
    position: int = 0  # index into the current epoch's permutation
    consumed: int = 0  # prompts handed out since the start of training

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "consumed": self.consumed}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> StreamState:
        try:
            return cls(int(data["epoch"]), int(data["position"]), int(data["consumed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"prompt stream state is malformed: {data!r}") from exc


class PromptStream:
    """Hands out records in a seeded per-epoch order; ``state`` makes it resumable."""

    def __init__(self, dataset: Sequence[Record], seed: int, state: StreamState | None = None):
        if len(dataset) == 0:
            raise ValueError("the training split is empty: nothing to train on")
        self._dataset = dataset
        self._seed = seed
        self.state = state or StreamState()
        self._order = self._permutation(self.state.epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(self._dataset))

    def next_batch(self, n: int) -> list[Record]:
        """The next ``n`` records, rolling into the next epoch when this one runs out."""
        return [record for record, _ in self.take(n)]

    def take(self, n: int) -> list[tuple[Record, PromptId]]:
        """The next ``n`` records, each with its dataset id (id, epoch, index in the split)."""
        out: list[tuple[Record, PromptId]] = []
        while len(out) < n:
            if self.state.position >= len(self._order):
                self.state.epoch += 1
                self.state.position = 0
                self._order = self._permutation(self.state.epoch)
            take = min(n - len(out), len(self._order) - self.state.position)
            idx = self._order[self.state.position : self.state.position + take]
            for i in idx:
                record = self._dataset[int(i)]
                out.append((record, PromptId(record.id, self.state.epoch, int(i))))
            self.state.position += take
        self.state.consumed += n
        return out
