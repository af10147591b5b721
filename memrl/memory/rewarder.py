"""Memory-R / Memory-R+ intrinsic rewards for a stream of rollout batches (one process).

:class:`MemoryRewarder` owns the encoder, one :class:`~memrl.memory.shard.MemoryShard` (success
and failure memories) and the :class:`~memrl.memory.normaliser.RewardNormaliser`. One call of
:meth:`MemoryRewarder.score_and_insert` per rollout batch (one training step):

1. encode the step's distinct texts in one batched call (question embeddings cached);
2. ``paper`` mode: look every response up against the memories as they were before the step,
   then insert all of them; ``reference`` mode: insert then score one response at a time in
   batch order, as the official code;
3. normalise in batch order (windows, warm-up, annealing) and return the exploit and explore
   rewards, unweighted (the total reward, :func:`memrl.rewards.total.total_reward`, weighs
   them by λ_s and λ_e).

Differences between the modes (``reference`` = the official code; docs/method.md,
"Episodic memory"):

============================  =================================  ==============================
aspect                        paper (default)                    reference
============================  =================================  ==============================
order                         score whole step, then insert      insert, then score, per response
exploit                       −n, min-max with ε                 1 − n̂ (no ε); flat window: 1 − n
explore                       min-max with ε                     no ε; flat window: 0
empty retrieval               0 for both                         exploit 0, explore 1.0
annealing                     once per step after warm-up        once per normalised explore value
warm-up counted               before the step                    after inserting each response
============================  =================================  ==============================

In both modes every response is keyed by its own question and eviction is correct (the
official code's two bugs are not reproduced). ``reference`` mode repeats the official
float32 operations exactly, including its cosine's broadcast [v, v] division by norms
(:func:`memrl.memory.rewards.reference_novelty`): with insert-before-score a wrong answer is
compared with itself, its novelty is rounding noise (~1e-7), and that noise decides whether the
window is flat, so anything less than bit-equal arithmetic changes rewards by up to 1.

Snapshots: :meth:`MemoryRewarder.save` writes the shard's memories (layout in
:mod:`memrl.memory.store`) plus ``steps_done`` and the normaliser's state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memrl.memory.embedder import Embedder, StepEncoder, encoder_device, make_embedder
from memrl.memory.index import resolve_device
from memrl.memory.normaliser import RewardNormaliser
from memrl.memory.settings import MemorySettings
from memrl.memory.shard import EncodedStep, MemoryShard, PartialLookup, RawScores, merge_partials
from memrl.memory.snapshot import SnapshotError
from memrl.memory.store import load_into, read_shard, save_shard


class MemoryRewarder:
    """Both episodic memories and their intrinsic rewards."""

    def __init__(
        self,
        settings: MemorySettings,
        embedder: Embedder | None = None,
        shard_index: int = 0,
        num_shards: int = 1,
    ):
        self.settings = settings
        self.device = resolve_device(settings.device)
        if embedder is None:
            embedder = make_embedder(
                settings.embedder, encoder_device(settings.device), settings.encode_batch_size,
                backend=settings.embedder_backend,
            )
        self.encoder = StepEncoder(embedder, settings.question_cache_size,
                                   merge_equal_tokens=settings.mode == "reference")
        self.shard = MemoryShard(settings, embedder.dim, shard_index, num_shards, self.device)
        self.normaliser = RewardNormaliser(settings)
        self.steps_done = 0
        self._last: dict[str, float] = {}

    # ---- scoring -----------------------------------------------------------------------
    def score_and_insert(
        self,
        questions: Sequence[str],
        reasonings: Sequence[str],
        correct: Sequence[float | bool],
        step: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rewards for one rollout batch, and the batch written to the memories.

        Args:
            questions: [n] question text of each response (its own question).
            reasonings: [n] reasoning text of each response (the ``<reasoning>`` part, or the
                whole completion when the tag is missing).
            correct: [n] outcome rewards or bools; > 0.5 goes to the success memory.
            step: 0-based training step of the batch; default: one more than the last step.
        Returns:
            exploit [n], explore [n] float32, normalised (explore 0 without Memory-R+).
        """
        batch = self.prepare(questions, reasonings, correct, step)
        return self.finish(batch, self.raw_scores(batch))

    def raw_scores(self, batch: EncodedStep, peer_parts: Sequence[PartialLookup] = ()) -> RawScores:
        """Score ``batch`` against the memories and insert it, in the mode's order.
        ``peer_parts``: the other shards' lookups of the same batch (paper mode, sharded)."""
        if self.settings.mode == "reference":
            return self.shard.insert_then_score(batch)
        local = self.shard.lookup_then_insert(batch)
        return merge_partials([local, *peer_parts], batch, self.settings.k)

    def prepare(
        self,
        questions: Sequence[str],
        reasonings: Sequence[str],
        correct: Sequence[float | bool],
        step: int | None = None,
    ) -> EncodedStep:
        """Validate and encode one batch (one batched encoder call)."""
        n = len(questions)
        if len(reasonings) != n or len(correct) != n:
            raise ValueError(
                f"questions ({n}), reasonings ({len(reasonings)}) and correct ({len(correct)}) "
                "must have one entry per response"
            )
        for name, texts in (("questions", questions), ("reasonings", reasonings)):
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TypeError(f"{name}[{i}] is {type(t).__name__}, expected str")
        success = np.zeros(n, dtype=bool)
        for i, c in enumerate(correct):
            value = float(c)
            if math.isnan(value):
                raise ValueError(f"correct[{i}] is NaN")
            success[i] = value > 0.5
        if step is None:
            step = self.steps_done
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step = {step!r}: must be an integer >= 0")
        encoded = self.encoder.encode(list(questions), list(reasonings))
        return EncodedStep(
            **vars(encoded),
            success=success,
            value_texts=list(reasonings),
            step=int(step),
        )

    def finish(self, batch: EncodedStep, raw: RawScores) -> tuple[np.ndarray, np.ndarray]:
        """Normalise a step's raw scores (batch order) and advance the step counter."""
        exploit, explore = self.normaliser.apply(raw.distance, raw.novelty, raw.failure_keys, batch.step)
        self.steps_done = max(self.steps_done, batch.step + 1)
        self._last = _step_stats(raw, exploit, explore)
        return exploit, explore

    # ---- state -------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Flat dict of floats: memory sizes, last-step hit rates and reward means, encoder
        counters."""
        out = dict(self.shard.sizes())
        out.update(self._last)
        out["steps_done"] = float(self.steps_done)
        out["texts_encoded"] = float(self.encoder.texts_encoded)
        out["question_cache_hits"] = float(self.encoder.cache_hits)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write a verified snapshot of the memories and normaliser state (atomic)."""
        state = {"steps_done": self.steps_done, "normaliser": self.normaliser.state_dict()}
        return save_shard(directory, self.shard, state)

    def load(self, directory: str | Path) -> None:
        """Replace memories and normaliser state by a snapshot's. Everything is verified and
        built first; on any error nothing is changed."""
        snap = read_shard(directory)
        normaliser = RewardNormaliser(self.settings)
        try:
            normaliser.load_state_dict(snap.state["normaliser"])
            steps_done = int(snap.state["steps_done"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{snap.path / 'state.json'}: bad rewarder state ({exc!r})") from None
        load_into(self.shard, snap)
        self.normaliser = normaliser
        self.steps_done = steps_done

    @classmethod
    def from_snapshot(
        cls, directory: str | Path, embedder: Embedder | None = None, **overrides: object
    ) -> MemoryRewarder:
        """A rewarder with the snapshot's settings (``overrides`` replace fields, e.g.
        ``device``) and contents."""
        snap = read_shard(directory)
        settings = MemorySettings.from_dict({**snap.settings.to_dict(), **overrides})
        rewarder = cls(settings, embedder, snap.shard_index, snap.num_shards)
        rewarder.load(snap.path)
        return rewarder


def _step_stats(raw: RawScores, exploit: np.ndarray, explore: np.ndarray) -> dict[str, float]:
    n = len(exploit)
    if n == 0:
        return {}
    exploit_hit = ~np.isnan(raw.distance)
    explore_hit = ~np.isnan(raw.novelty)
    return {
        "exploit_hit_rate": float(exploit_hit.mean()),
        "explore_hit_rate": float(explore_hit.mean()),
        "exploit_mean": float(exploit.mean()),
        "explore_mean": float(explore.mean()),
        "exploit_distance_mean": float(raw.distance[exploit_hit].mean()) if exploit_hit.any() else 0.0,
        "explore_novelty_mean": float(raw.novelty[explore_hit].mean()) if explore_hit.any() else 0.0,
    }
