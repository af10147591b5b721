"""The episodic memory as one cluster-wide Ray service (optionally sharded by question).

- :class:`MemoryActor`: an async actor over a :class:`~memrl.memory.rewarder.MemoryRewarder`.
  The driver's reward task sends a whole step in one ``score_and_insert`` call; calls are
  scored one at a time, in arrival order, and a snapshot waits for the call in progress, while
  ``metrics`` and the health checks answer at any time.
- :class:`MemoryShardActor`: holds the questions of one shard (hash of the question text) when
  ``num_shards > 1``; the primary :class:`MemoryActor` encodes, fans the lookup out to every
  shard, merges the top-K exactly and normalises.
- :class:`MemoryClient`: creates the actors and hides sharding; picklable, so rollout workers
  can receive it.

Restarts: actors run with ``max_restarts=-1``. ``snapshot(dir)`` writes a verified snapshot
and records where it is in the GCS (keyed by ``snapshot_root``); a restarted actor (Ray re-runs
``__init__``, possibly on another node) loads the snapshot named there, so it resumes with the
contents of its last snapshot. On a first start it loads ``initial_snapshot`` when given
(resuming a run). The snapshot itself must be readable from wherever Ray may restart the
actor: shared storage, or a cloud URI (a checkpoint on object storage); a restart that cannot
read it fails with :class:`SnapshotUnreachable` instead of starting empty.

Placement: ``num_gpus`` (a fraction is fine) puts the encoder and the key index on the GPU;
with 0 GPUs Ray hides all devices and everything runs on CPU.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.experimental import internal_kv

from memrl.actors.startup import announce
from memrl.checkpoint import is_local, local_copy, local_path, upload_dir
from memrl.errors import RuntimeFault
from memrl.memory.index import resolve_device
from memrl.memory.rewarder import MemoryRewarder
from memrl.memory.settings import MemorySettings
from memrl.memory.shard import EncodedStep, MemoryShard, PartialLookup
from memrl.memory.snapshot import shard_dir, write_shard_index
from memrl.memory.store import load_into, read_shard, save_shard
from memrl.run_dir import MEMORY_UPLOAD_PREFIX
from memrl.terminal import redirect_actor_output

_LATENCY_WINDOW = 1000


class SnapshotUnreachable(RuntimeFault, RuntimeError):
    """A restarted memory actor cannot read the snapshot it must resume from."""

    label = "the memory service cannot restart"
    hint = "resume with --resume auto once the snapshot is reachable from every node"


class _LatestPointer:
    """The snapshot a restarted actor loads, kept in the GCS (Ray's internal key-value store)
    under the actor's snapshot root: every node reads it, whichever node the actor restarts
    on, and it outlives the node that wrote it (the GCS runs on the head)."""

    NAMESPACE = "memrl-memory"

    def __init__(self, root: str | None):
        self.root = Path(root) if root else None

    def _key(self) -> bytes:
        assert self.root is not None, "callers return early when there is no snapshot root"
        return str(self.root.absolute()).encode()

    def record(self, snapshot: str | Path) -> None:
        """Name ``snapshot`` (a local path, absolute, or a cloud URI) as the one to restart from."""
        if self.root is None:
            return
        where = str(snapshot) if not is_local(str(snapshot)) else str(local_path(str(snapshot)).absolute())
        internal_kv._internal_kv_put(self._key(), where.encode(), overwrite=True,
                                     namespace=self.NAMESPACE)

    def clear(self) -> None:
        """Forget the pointer (a first start: an earlier run in this root left one)."""
        if self.root is not None:
            internal_kv._internal_kv_del(self._key(), namespace=self.NAMESPACE)

    def read(self) -> str | None:
        if self.root is None:
            return None
        value = internal_kv._internal_kv_get(self._key(), namespace=self.NAMESPACE)
        return value.decode() if value else None


def _startup_snapshot(pointer: _LatestPointer, initial_snapshot: str | None) -> str | None:
    """After a restart: the latest recorded snapshot; on a first start: ``initial_snapshot``
    (a path or a cloud URI). A restart whose snapshot this node cannot read raises
    :class:`SnapshotUnreachable` instead of starting empty."""
    if not ray.get_runtime_context().was_current_actor_reconstructed:
        pointer.clear()
        return initial_snapshot or None
    latest = pointer.read() or initial_snapshot
    if latest is not None and is_local(latest) and not local_path(latest).exists():
        node = ray.get_runtime_context().get_node_id()
        raise SnapshotUnreachable(
            f"the memory service restarted on node {node[:12]}, but its last snapshot {latest} "
            "is not there (written on another node's disk): put output_dir on storage every "
            "node mounts, or trainer.checkpoint_uri on object storage (s3://, gs://), so that a "
            "restarted memory finds its snapshot; it does not start empty")
    return latest


class MemoryActor:
    """The memory service (primary shard). Use through :class:`MemoryClient`."""

    def __init__(
        self,
        settings: dict[str, Any],
        snapshot_root: str | None = None,
        initial_snapshot: str | None = None,
        num_shards: int = 1,
        peers: Sequence[Any] = (),
    ):
        redirect_actor_output("memory shard 0")
        import torch  # first tensor use in a fresh worker is slow unless torch is imported early

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.settings = MemorySettings.from_dict(settings)
        announce("memory shard 0", f"loading the question encoder ({self.settings.embedder})")
        self.rewarder = MemoryRewarder(self.settings, shard_index=0, num_shards=num_shards)
        self.num_shards = num_shards
        self.peers = list(peers)
        self.pointer = _LatestPointer(snapshot_root)
        # bool(): Ray's property is untyped and returns its lookup (a dict) when that is empty
        self.restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
        self.loaded_from: str | None = None
        startup = _startup_snapshot(self.pointer, initial_snapshot)
        if startup is not None:
            with local_copy(startup) as local:
                self.rewarder.load(shard_dir(local, 0) if num_shards > 1 else local)
            self.loaded_from = startup
        self._lock = asyncio.Lock()  # one step scored at a time; snapshots wait for it
        self._latencies_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._requests = 0

    async def score_and_insert(
        self,
        questions: Sequence[str],
        reasonings: Sequence[str],
        correct: Sequence[float | bool],
        step: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exploit and explore rewards ([n] float32 each) of one rollout batch, which is then
        stored. See :meth:`MemoryRewarder.score_and_insert`."""
        started = time.perf_counter()
        async with self._lock:
            exploit, explore = await self._score(list(questions), list(reasonings), list(correct), step)
        self._latencies_ms.append(1000.0 * (time.perf_counter() - started))
        self._requests += 1
        return exploit, explore

    async def _score(self, questions: list[str], reasonings: list[str], correct: list[float | bool],
                     step: int | None) -> tuple[np.ndarray, np.ndarray]:
        batch = await asyncio.to_thread(self.rewarder.prepare, questions, reasonings, correct, step)
        peer_parts: list[PartialLookup] = []
        if self.peers:
            batch_ref = ray.put(batch)  # one copy in the object store for every shard
            calls = [p.lookup_then_insert.remote(batch_ref) for p in self.peers]
            peer_parts = list(await asyncio.gather(*calls))
        raw = await asyncio.to_thread(self.rewarder.raw_scores, batch, peer_parts)
        return self.rewarder.finish(batch, raw)

    async def snapshot(self, directory: str) -> str:
        """Write a verified snapshot (all shards when sharded) and remember it as the one to
        load after a restart. Waits for the batch in progress; returns the directory.

        ``directory`` may be a cloud URI (``s3://``, ``gs://``; one shard only): the snapshot is
        then staged in a local folder under the snapshot root, uploaded to the URI, and a
        restart (on any node) downloads it from there."""
        if not is_local(directory):
            if self.peers:
                raise ValueError("sharded memories snapshot to a local or shared path only")
            if self.pointer.root is None:
                raise ValueError("a cloud snapshot URI needs the client's snapshot_root")
            local = self.pointer.root / (MEMORY_UPLOAD_PREFIX + directory.rstrip("/").rsplit("/", 1)[-1])
            await self.snapshot(str(local))
            await asyncio.to_thread(upload_dir, local, directory)
            self.pointer.record(directory)  # a restart on any node downloads it from there
            return directory
        path = local_path(directory).absolute()
        async with self._lock:
            if self.peers:
                await asyncio.gather(
                    *[p.snapshot.remote(str(shard_dir(path, i + 1))) for i, p in enumerate(self.peers)]
                )
                await asyncio.to_thread(self.rewarder.save, shard_dir(path, 0))
                write_shard_index(path, self.num_shards)
            else:
                await asyncio.to_thread(self.rewarder.save, path)
            self.pointer.record(path)
        return str(path)

    async def remember_snapshot(self, directory: str) -> None:
        """Record ``directory`` (a snapshot that moved, e.g. a checkpoint renamed into place;
        a path or a cloud URI) as the one to load after a restart."""
        self.pointer.record(directory)

    async def metrics(self) -> dict[str, float]:
        """Flat dict of floats: sizes (all shards), last-step hit rates and reward means,
        request latency p50/p99 in ms (last 1000 requests, waiting included), requests."""
        out = self.rewarder.metrics()
        if self.peers:
            for sizes in await asyncio.gather(*[p.sizes.remote() for p in self.peers]):
                for key, value in sizes.items():
                    out[key] = out.get(key, 0.0) + value
        latencies = np.array(self._latencies_ms) if self._latencies_ms else np.zeros(1)
        out.update(
            latency_p50_ms=float(np.percentile(latencies, 50)),
            latency_p99_ms=float(np.percentile(latencies, 99)),
            requests=float(self._requests),
            restarted=float(self.restarted),
            num_shards=float(self.num_shards),
        )
        return out

    def loaded_snapshot(self) -> str | None:
        """The snapshot this actor started from (None: started empty)."""
        return self.loaded_from

    def node_id(self) -> str:
        """The Ray node this actor runs on (it moves when restarted elsewhere)."""
        return ray.get_runtime_context().get_node_id()

    def device(self) -> str:
        """``cpu`` or ``cuda``: where the key index lives."""
        return self.rewarder.device


class MemoryShardActor:
    """One extra shard of a sharded memory (questions whose hash selects it)."""

    def __init__(
        self,
        settings: dict[str, Any],
        shard_index: int,
        num_shards: int,
        snapshot_root: str | None = None,
        initial_snapshot: str | None = None,
    ):
        redirect_actor_output(f"memory shard {shard_index}")
        self.settings = MemorySettings.from_dict(settings)
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.pointer = _LatestPointer(snapshot_root)
        self.shard: MemoryShard | None = None  # built on first use: the dim comes with the data
        startup = _startup_snapshot(self.pointer, initial_snapshot)
        if startup is not None:
            self.load(str(startup))

    def _ensure(self, dim: int) -> MemoryShard:
        if self.shard is None:
            self.shard = MemoryShard(
                self.settings,
                dim,
                self.shard_index,
                self.num_shards,
                resolve_device(self.settings.device),
            )
        return self.shard

    def lookup_then_insert(self, batch: EncodedStep) -> PartialLookup:
        return self._ensure(batch.question_vecs.shape[1]).lookup_then_insert(batch)

    def sizes(self) -> dict[str, float]:
        return self.shard.sizes() if self.shard is not None else {}

    def snapshot(self, directory: str) -> str:
        if self.shard is None:
            raise RuntimeError(
                f"memory shard {self.shard_index} has not seen a batch yet; nothing to snapshot"
            )
        path = save_shard(directory, self.shard, {})
        self.pointer.record(path)
        return str(path)

    def load(self, directory: str) -> None:
        snap = read_shard(directory)
        load_into(self._ensure(snap.dim), snap)


class MemoryClient:
    """Cluster-wide handle on the memory service; hides sharding. Picklable.

    Args:
        settings: the memory settings.
        num_shards: actors holding the questions (hash of question text); 1 for most runs.
        num_cpus, num_gpus: resources of each actor (a GPU fraction is fine).
        resources: custom Ray resources of each actor (e.g. the on-demand nodes' marker).
        snapshot_root: keys the restart pointer (in the GCS) and holds the staging folders of
            cloud snapshots; snapshots written under it must be readable from any node the
            actors may restart on (shared storage), or go to a cloud URI.
        initial_snapshot: snapshot to start from (resuming a run), or None for empty memories.
        name: Ray name of the primary actor (lets other drivers look it up).
        timeout_s: limit on each blocking call.
    """

    def __init__(
        self,
        settings: MemorySettings,
        num_shards: int = 1,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        snapshot_root: str | None = None,
        initial_snapshot: str | None = None,
        name: str | None = None,
        resources: dict[str, float] | None = None,
        max_concurrency: int = 1000,
        timeout_s: float = 600.0,
    ):
        if num_shards < 1:
            raise ValueError(f"memory.num_shards = {num_shards}: must be >= 1")
        if num_shards > 1 and settings.mode == "reference":
            raise ValueError("memory.mode = 'reference' cannot be sharded; use num_shards = 1")
        self.settings = settings
        self.num_shards = num_shards
        self.timeout_s = timeout_s
        options: dict[str, Any] = dict(max_restarts=-1, num_cpus=num_cpus, num_gpus=num_gpus,
                                       resources=dict(resources or {}))
        # Ray types a handle as ActorProxy (the handle or the class), which types no call of an
        # actor method without @ray.method nor ray.kill: handles are Any, as in RolloutPool.
        peers: list[Any] = []
        for i in range(1, num_shards):
            peers.append(
                ray.remote(MemoryShardActor)
                .options(**options)
                .remote(
                    settings.to_dict(),
                    i,
                    num_shards,
                    str(shard_dir(snapshot_root, i)) if snapshot_root else None,
                    str(shard_dir(initial_snapshot, i)) if initial_snapshot else None,
                )
            )
        primary_options = dict(options, max_concurrency=max_concurrency)
        if name:
            primary_options["name"] = name
        self.actor: Any = (
            ray.remote(MemoryActor)
            .options(**primary_options)
            .remote(settings.to_dict(), snapshot_root, initial_snapshot, num_shards, peers)
        )
        self.peers = peers
        # Answered once every actor has started: what poll_ready waits for.
        self._first_answers: list[ray.ObjectRef] | None = [
            self.actor.loaded_snapshot.remote(), *[p.sizes.remote() for p in peers]]

    def poll_ready(self) -> bool:
        """Whether every actor of the service has started (does not block); raises the error of
        one whose start failed."""
        if self._first_answers is None:
            return True
        done, waiting = ray.wait(self._first_answers, num_returns=len(self._first_answers), timeout=0)
        ray.get(done)
        if waiting:
            return False
        self._first_answers = None
        return True

    def score_and_insert(
        self,
        questions: Sequence[str],
        reasonings: Sequence[str],
        correct: Sequence[float | bool],
        step: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Blocking: exploit and explore rewards ([n] float32, read-only) of one batch."""
        ref = self.score_and_insert_async(questions, reasonings, correct, step)
        return ray.get(ref, timeout=self.timeout_s)

    def score_and_insert_async(
        self,
        questions: Sequence[str],
        reasonings: Sequence[str],
        correct: Sequence[float | bool],
        step: int | None = None,
    ) -> ray.ObjectRef:
        """Non-blocking: an ObjectRef to ``(exploit, explore)``."""
        return self.actor.score_and_insert.remote(list(questions), list(reasonings), list(correct), step)

    def snapshot(self, directory: str | Path) -> str:
        """Write a verified snapshot of every shard; the actors reload it after a restart."""
        return ray.get(self.actor.snapshot.remote(str(directory)), timeout=self.timeout_s)

    def remember_snapshot(self, directory: str | Path) -> None:
        """Point restarts at ``directory`` (a snapshot moved after it was written)."""
        ray.get(self.actor.remember_snapshot.remote(str(directory)), timeout=self.timeout_s)

    def metrics(self) -> dict[str, float]:
        return ray.get(self.actor.metrics.remote(), timeout=self.timeout_s)

    def shutdown(self) -> None:
        """Stop the service's actors (no restart)."""
        for actor in [self.actor, *self.peers]:
            ray.kill(actor, no_restart=True)

    def node_id(self) -> str:
        """The node the primary actor runs on now."""
        return ray.get(self.actor.node_id.remote(), timeout=self.timeout_s)

    def wait_ready(self) -> str | None:
        """Block until the service is up; returns the snapshot it started from."""
        return ray.get(self.actor.loaded_snapshot.remote(), timeout=self.timeout_s)
