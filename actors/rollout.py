"""Ray actor shell around a generation engine: resources, weight sync, health and timing.

Weights travel as ``(version, ObjectRef)`` inside a tuple, so Ray does not resolve the ref
when the call arrives; the worker calls ``ray.get`` itself, and only when the version is
newer than the one it holds. A worker that restarts (``max_restarts=-1``) rebuilds from
``model_path`` (version 0) and catches up on the next request, which always carries the
current ``(version, ref)``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import ray

from memrl.actors.startup import announce
from memrl.model.loading import loading_stage
from memrl.rollout.engine import SamplingSettings
from memrl.rollout.factory import make_engine, resolve_engine_kind
from memrl.terminal import redirect_actor_output
from memrl.types import RolloutBatch

WeightsHandle = tuple[int, ray.ObjectRef]

log = logging.getLogger(__name__)


class RolloutWorker:
    """Generates completion groups with the current policy weights.

    Args:
        worker_id: name used in batches, metrics and fault reports.
        model_path: Hugging Face model folder every (re)start builds from.
        engine_kind: ``"auto"``, ``"hf"`` or ``"vllm"`` (see ``memrl.rollout.factory.make_engine``).
        engine_kwargs: extra keyword arguments for the engine constructor.
        vllm_kwargs: extra keyword arguments used only when the engine resolves to vLLM (the
            choice of ``auto`` is made on the worker's node, which may differ from the
            driver's), e.g. ``gpu_memory_utilization``.
        seed: engine seed (draws of requests that carry no ``SamplingSettings.seed``).
        weight_fetch_timeout_s: limit on fetching one weight version from the object store.
    """

    def __init__(
        self,
        worker_id: str,
        model_path: str,
        engine_kind: str = "auto",
        engine_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        weight_fetch_timeout_s: float = 300.0,
        vllm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        redirect_actor_output(worker_id)
        # Imported here so the first tensor this process receives does not pay for it (~29 s).
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        self._threads = max(1, int(cpus))
        torch.set_num_threads(self._threads)
        self._worker_id = worker_id
        self._engine_kind = resolve_engine_kind(engine_kind)
        kwargs = {"seed": seed, **(engine_kwargs or {})}
        # One torch thread per CPU of the actor (on vLLM's CPU build too): no oversubscription.
        kwargs.setdefault("num_threads", self._threads)
        if self._engine_kind == "vllm":
            kwargs.update(vllm_kwargs or {})
            memory = ray.get_runtime_context().get_assigned_resources().get("memory")
            if memory:  # half of the actor's reserved memory for the KV cache (CPU build)
                kwargs.setdefault("kv_cache_gib", max(1.0, memory / 2**31))
        announce(worker_id, f"starting the {self._engine_kind} engine ({loading_stage(model_path)})")
        self._engine = make_engine(self._engine_kind, model_path, **kwargs)
        self._engine_info = f"{self._engine_kind} on {self._engine.device}"
        # One line per worker (re)start in its log and the driver's: which engine really runs.
        log.warning("rollout worker %s: engine %s, %d thread(s), model %s", worker_id,
                    self._engine_info, self._threads, model_path)
        self._weight_fetch_timeout_s = weight_fetch_timeout_s
        # generate() runs on one thread at a time; ping()/stats() answer while it runs.
        self._generate_lock = threading.Lock()
        self._busy = False
        self._stats: dict[str, float] = {
            "num_batches": 0,
            "num_tokens": 0,
            "num_syncs": 0,
            "last_fetch_s": 0.0,
            "last_sync_s": 0.0,
            "last_generate_s": 0.0,
            "last_tokens_per_s": 0.0,
        }

    def _sync(self, weights: WeightsHandle | None) -> None:
        """Load the announced weights when they are newer than the engine's."""
        if weights is None:
            return
        if not (isinstance(weights, tuple) and len(weights) == 2):
            raise TypeError(
                f"worker {self._worker_id}: weights must be a (version, ObjectRef) tuple, "
                f"got {type(weights).__name__}"
            )
        version, ref = weights
        if version <= self._engine.weight_version:
            return
        start = time.perf_counter()
        packed = ray.get(ref, timeout=self._weight_fetch_timeout_s)
        fetched = time.perf_counter()
        if packed.version != version:
            raise ValueError(
                f"worker {self._worker_id}: announced weight version {version} but the object "
                f"holds version {packed.version}"
            )
        self._engine.load_weights(packed)
        self._stats["last_fetch_s"] = fetched - start
        self._stats["last_sync_s"] = time.perf_counter() - start
        self._stats.update({f"last_{phase}_s": s for phase, s in self._engine.load_phases.items()})
        self._stats["num_syncs"] += 1

    @ray.method(num_returns=2)
    def generate(
        self,
        prompts: list[str],
        record_ids: list[str],
        settings: SamplingSettings,
        weights: WeightsHandle | None = None,
        *,
        greedy: bool = False,
    ) -> tuple[RolloutBatch, dict[str, Any]]:
        """Sync to ``weights`` if newer, then sample ``settings.num_generations`` per prompt.

        Returns two objects: the batch (left in the object store for the reward step and the
        learners) and a small summary the driver reads (tokens, timings, weight version).
        """
        with self._generate_lock:
            self._busy = True
            sync_s = 0.0
            try:
                version_before = self._engine.weight_version
                self._sync(weights)
                if self._engine.weight_version != version_before:
                    sync_s = self._stats["last_sync_s"]
                start = time.perf_counter()
                batch = self._engine.generate(prompts, record_ids, settings, greedy=greedy)
                elapsed = time.perf_counter() - start
            finally:
                self._busy = False
            batch.worker_id = self._worker_id
            tokens = int(batch.completion_mask.sum())
            self._stats["num_batches"] += 1
            self._stats["num_tokens"] += tokens
            self._stats["last_generate_s"] = elapsed
            self._stats["last_tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        info = {
            "worker_id": self._worker_id,
            "tokens": tokens,
            "generate_seconds": elapsed,
            "sync_seconds": sync_s,
            "weight_version": batch.weight_version,
            "num_completions": batch.num_completions,
        }
        return batch, info

    def ping(self) -> dict[str, Any]:
        """Health probe: identity, process, weight version and whether a request is running."""
        context = ray.get_runtime_context()
        return {
            "worker_id": self._worker_id,
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "engine": self._engine_kind,
            "engine_info": self._engine_info,
            "threads": self._threads,
            "weight_version": self._engine.weight_version,
            "busy": self._busy,
        }

    def stats(self) -> dict[str, Any]:
        """Counters since (re)start: batches, tokens, syncs, last sync and generation timings
        (with the engine's phases of the last load, e.g. ``last_reload_s``, ``last_verify_s``)."""
        return {
            "worker_id": self._worker_id,
            "weight_version": self._engine.weight_version,
            **self._stats,
        }


def make_rollout_worker_class(num_cpus: float = 1.0, num_gpus: float = 0.0,
                              resources: dict[str, float] | None = None) -> Any:
    """``RolloutWorker`` as a Ray actor class with these resources (``resources``: custom ones).

    Restarts forever (``max_restarts=-1``) but never retries a call (``max_task_retries=0``):
    the driver decides whether to resubmit a lost request. Two concurrent calls let
    ``ping``/``stats`` answer while ``generate`` runs. Create actors from the driver so that
    they do not die with an intermediate owner.
    """
    # Ray's typed overload of ray.remote(**options) lists the task options only (no
    # max_concurrency), though the call takes every actor option.
    return ray.remote(  # pyright: ignore[reportCallIssue]
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=dict(resources or {}),
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=2,
    )(RolloutWorker)
