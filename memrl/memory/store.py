"""Snapshots of a memory shard: what the snapshot entries are and how they map to memories.

Entries (inside the verified container of :mod:`memrl.memory.snapshot`), per memory ``M`` in
``success``/``failure``:

- ``M_keys.npy`` [K, dim] float32, question keys in slot order;
- ``M_values.npy`` [V, dim] float32, response embeddings slot by slot, oldest first;
- ``M_value_counts.npy`` [K] int64, values per key (sums to V);
- ``M_questions.json`` [K] question texts;
- ``M_value_texts.json`` [K][count] reasoning texts, oldest first (truncated to
  ``value_text_chars``);
- ``state.json``: ``next_evict`` per memory plus the owner's state (the rewarder stores
  ``steps_done`` and its normaliser's windows there).

``meta`` holds the settings, the embedding ``dim``, ``shard_index``, ``num_shards`` and sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memrl.memory.episodic import MemoryArrays
from memrl.memory.settings import MemorySettings
from memrl.memory.shard import MemoryShard
from memrl.memory.snapshot import SnapshotError, read_snapshot, write_snapshot

MEMORY_NAMES = ("success", "failure")


@dataclass
class ShardSnapshot:
    """A verified shard snapshot, decoded."""

    path: Path
    settings: MemorySettings
    dim: int
    shard_index: int
    num_shards: int
    memories: dict[str, MemoryArrays]
    state: dict[str, Any]  # the owner's state (without ``next_evict``)


def save_shard(directory: str | Path, shard: MemoryShard, state: dict[str, Any]) -> Path:
    """Write ``shard``'s memories and the owner's JSON ``state`` atomically to ``directory``."""
    arrays: dict[str, np.ndarray] = {}
    documents: dict[str, Any] = {}
    next_evict = {}
    for name, a in shard.to_arrays().items():
        arrays[f"{name}_keys"] = a.keys
        arrays[f"{name}_values"] = a.values
        arrays[f"{name}_value_counts"] = a.value_counts
        documents[f"{name}_questions"] = a.questions
        documents[f"{name}_value_texts"] = a.value_texts
        next_evict[name] = a.next_evict
    documents["state"] = {**state, "next_evict": next_evict}
    meta = {
        "settings": shard.settings.to_dict(),
        "dim": shard.dim,
        "shard_index": shard.shard_index,
        "num_shards": shard.num_shards,
        "sizes": shard.sizes(),
    }
    return write_snapshot(directory, arrays, documents, meta)


def read_shard(directory: str | Path) -> ShardSnapshot:
    """Verify and decode a shard snapshot; anything missing or inconsistent raises
    :class:`SnapshotError` naming the snapshot and the entry."""
    snap = read_snapshot(directory)
    where = snap.path / "manifest.json"
    try:
        settings = MemorySettings.from_dict(dict(snap.meta["settings"]))
        dim = int(snap.meta["dim"])
        shard_index, num_shards = int(snap.meta["shard_index"]), int(snap.meta["num_shards"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{where}: bad meta ({exc})") from None
    state = snap.documents.get("state")
    if not isinstance(state, dict) or not isinstance(state.get("next_evict"), dict):
        raise SnapshotError(f"{snap.path / 'state.json'}: missing or without 'next_evict'")
    memories = {}
    for name in MEMORY_NAMES:
        if f"{name}_keys" not in snap.arrays:
            continue
        try:
            memories[name] = MemoryArrays(
                keys=snap.arrays[f"{name}_keys"],
                values=snap.arrays[f"{name}_values"],
                value_counts=snap.arrays[f"{name}_value_counts"].astype(np.int64),
                questions=[str(q) for q in snap.documents[f"{name}_questions"]],
                value_texts=[[str(t) for t in v] for v in snap.documents[f"{name}_value_texts"]],
                next_evict=int(state["next_evict"][name]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{snap.path}: memory {name!r} incomplete ({exc!r})") from None
    if "success" not in memories:
        raise SnapshotError(f"{snap.path}: no success memory (success_keys.npy)")
    owner_state = {k: v for k, v in state.items() if k != "next_evict"}
    return ShardSnapshot(snap.path, settings, dim, shard_index, num_shards, memories, owner_state)


def load_into(shard: MemoryShard, snap: ShardSnapshot) -> None:
    """Replace ``shard``'s memories by the snapshot's after checking that it fits (same dim,
    same shard position); all-or-nothing."""
    if snap.dim != shard.dim:
        raise SnapshotError(f"{snap.path}: embedding dim {snap.dim}, but the embedder gives {shard.dim}")
    if (snap.shard_index, snap.num_shards) != (shard.shard_index, shard.num_shards):
        raise SnapshotError(
            f"{snap.path}: shard {snap.shard_index} of {snap.num_shards}, but this memory is "
            f"shard {shard.shard_index} of {shard.num_shards}"
        )
    try:
        shard.load_arrays(snap.memories)
    except ValueError as exc:
        raise SnapshotError(f"{snap.path}: contents do not fit the settings ({exc})") from None
