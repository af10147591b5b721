"""Human-readable view of a memory snapshot: sizes, value-count histogram and, for a query,
the nearest stored questions with the reasoning texts stored under them — what the policy is
being pulled towards (success memory) and pushed away from (failure memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memrl.memory.embedder import Embedder, make_embedder
from memrl.memory.episodic import MemoryArrays
from memrl.memory.snapshot import SnapshotError, snapshot_parts
from memrl.memory.store import ShardSnapshot, read_shard

_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_BAR = 40


def inspect_snapshot(
    snapshot_dir: str | Path,
    query: str | None = None,
    k: int = 3,
    embedder: Embedder | None = None,
    values_per_key: int = 3,
    text_chars: int = 200,
) -> str:
    """Describe a snapshot (single or sharded).

    Args:
        snapshot_dir: directory written by ``MemoryRewarder.save`` or ``MemoryClient.snapshot``.
        query: question text; when given, the ``k`` nearest keys of each memory are listed with
            their newest ``values_per_key`` reasoning texts (cut to ``text_chars``).
        embedder: encoder for the query; default: the one named in the snapshot's settings.
    Returns:
        The report as text (the CLI prints it).
    """
    parts = [read_shard(p) for p in snapshot_parts(snapshot_dir)]
    for part in parts:
        check_consistent(part)
    settings = parts[0].settings
    memories: dict[str, list[MemoryArrays]] = {}
    for snap in parts:
        for name, arrays in snap.memories.items():
            memories.setdefault(name, []).append(arrays)
    steps = max(int(snap.state.get("steps_done", 0)) for snap in parts)
    lines = [
        f"memory snapshot {Path(snapshot_dir)}",
        f"  mode {settings.mode}, k {settings.k}, capacity {settings.capacity_keys} keys x "
        f"{settings.capacity_values} values, embedder {settings.embedder}, shards {len(parts)}, "
        f"steps done {steps}",
    ]
    for name, shards in memories.items():
        counts = np.concatenate([a.value_counts for a in shards])
        lines.append("")
        lines.append(
            f"{name} memory: {len(counts)} keys, {int(counts.sum())} values"
            + (f", {counts.mean():.1f} values/key (max {counts.max()})" if len(counts) else "")
        )
        lines.extend(_histogram(counts))
    if query is not None:
        if embedder is None:
            embedder = make_embedder(settings.embedder, "cpu", backend=settings.embedder_backend)
        qvec = embedder.encode([query])[0]
        for name, shards in memories.items():
            lines.append("")
            lines.append(f"nearest {name} keys for query {_cut(query, text_chars)!r}:")
            lines.extend(_nearest(shards, qvec, k, values_per_key, text_chars))
    return "\n".join(lines)


def check_consistent(snap: ShardSnapshot) -> None:
    """Raise :class:`SnapshotError` unless every memory's entries agree with each other (a
    manifest recomputed over edited files verifies, yet its contents may not fit together)."""
    for name, a in snap.memories.items():
        where = f"{snap.path}: {name} memory"
        shapes = {"keys": a.keys.shape, "values": a.values.shape}
        for entry, shape in shapes.items():
            if len(shape) != 2 or shape[1] != snap.dim:
                raise SnapshotError(f"{where}: {name}_{entry}.npy has shape {shape}, expected "
                                    f"[N, {snap.dim}] (the snapshot's embedding dim)")
        sizes = {"keys": len(a.keys), "value_counts": len(a.value_counts),
                 "questions": len(a.questions), "value_texts": len(a.value_texts)}
        if len(set(sizes.values())) != 1:
            raise SnapshotError(f"{where}: entries disagree on the number of keys ({sizes})")
        if a.value_counts.ndim != 1 or (a.value_counts < 0).any() or \
                int(a.value_counts.sum()) != len(a.values):
            raise SnapshotError(f"{where}: value counts sum to {int(a.value_counts.sum())}, but "
                                f"{name}_values.npy holds {len(a.values)} values")
        for slot, (count, texts) in enumerate(zip(a.value_counts, a.value_texts)):
            if int(count) != len(texts):
                raise SnapshotError(f"{where}: key {slot} counts {int(count)} values but has "
                                    f"{len(texts)} value texts")


def _histogram(counts: np.ndarray) -> list[str]:
    if len(counts) == 0:
        return ["  (empty)"]
    top = int(counts.max())
    edges = [e for e in _EDGES if e <= top] + [top + 1]
    rows = []
    for low, high in zip(edges[:-1], edges[1:]):
        n = int(((counts >= low) & (counts < high)).sum())
        label = f"{low}" if high == low + 1 else f"{low}-{high - 1}"
        bar = "#" * max(1 if n else 0, round(_BAR * n / len(counts)))
        rows.append(f"  {label:>11} values: {n:>8} keys {bar}")
    return rows


def _nearest(
    shards: list[MemoryArrays], qvec: np.ndarray, k: int, per_key: int, chars: int
) -> list[str]:
    candidates = []
    for shard in shards:
        if len(shard.questions) == 0:
            continue
        sims = shard.keys @ qvec
        for slot in np.argsort(-sims, kind="stable")[:k]:
            candidates.append((float(sims[slot]), shard, int(slot)))
    if not candidates:
        return ["  (empty)"]
    candidates.sort(key=lambda c: -c[0])
    lines = []
    for rank, (sim, shard, slot) in enumerate(candidates[:k], start=1):
        texts = shard.value_texts[slot]
        question = _cut(shard.questions[slot], chars)
        lines.append(f"  {rank}. cos {sim:.3f}  {len(texts)} values  question: {question!r}")
        for text in reversed(texts[-per_key:]):
            lines.append(f"       - {_cut(text, chars)!r}")
    return lines


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 3] + "..."
