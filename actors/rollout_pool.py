"""Driver-side pool of rollout workers: dispatch, live membership, re-dispatch.

The pool owns only metadata. Each request returns two object refs from the worker: the
``RolloutBatch`` (left in the object store for the reward step and the learners) and a small
info dict the driver reads to learn that the request succeeded. A request whose worker dies or
exceeds the timeout is sent again to another worker, so no prompt group is lost; Ray restarts
the dead worker (``max_restarts=-1``) and it rejoins with the weights of its next request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from memrl.rollout.engine import SamplingSettings
from memrl.train.requests import GenerationRequest, chunk_requests, least_loaded
from memrl.types import RolloutBatch

log = logging.getLogger(__name__)

# Errors that mean "this worker could not finish the request", as opposed to a bug in the
# request itself (a RayTaskError wrapping a Python exception raised by generate()).
_WORKER_FAILURES = (RayActorError, GetTimeoutError)


@dataclass
class GenerationResult:
    batch_ref: ray.ObjectRef  # -> RolloutBatch, never fetched by the driver
    info: dict[str, Any]  # worker_id, tokens, seconds, weight_version, sync_seconds ...


@dataclass
class PoolEvents:
    """Failure counters since the pool was created (logged as health metrics)."""

    failures: int = 0
    redispatched: int = 0


Submit = Callable[[Any, GenerationRequest], tuple[ray.ObjectRef, ray.ObjectRef]]


@dataclass
class PendingGeneration:
    """Requests of one step in flight: queued, running, and finished results."""

    queue: deque[GenerationRequest]
    submit: Submit
    max_inflight_per_worker: int
    inflight: dict[ray.ObjectRef, tuple[GenerationRequest, str, ray.ObjectRef, float]] = field(default_factory=dict)
    results: dict[int, GenerationResult] = field(default_factory=dict)
    failed_workers: set[str] = field(default_factory=set)
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = deque(self.queue)
        self.order = [r.index for r in self.queue]


class RolloutPool:
    """A resizable set of rollout-worker actors with least-loaded dispatch.

    Args:
        factory: creates the actor for a worker id (the caller sets resources and restarts).
        size: initial number of workers.
        timeout_s: a request still running after this long counts as failed and is re-sent.
        max_attempts: a request that fails this many times aborts the step with an error that
            names the worker, its node and the call.
    """

    def __init__(self, factory: Callable[[str], Any], size: int, *, timeout_s: float,
                 max_attempts: int = 3):
        self._factory = factory
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._next_id = 0
        self.workers: dict[str, Any] = {}
        # worker id -> pending ping while the actor starts; dispatch skips it until it answers
        # (a worker the cluster cannot place yet must not hold requests hostage).
        self._joining: dict[str, ray.ObjectRef] = {}
        self.events = PoolEvents()
        self.resize(size)

    def __len__(self) -> int:
        return len(self.workers)

    def num_running(self) -> int:
        """Workers that have answered since they were created: the ones really generating (the
        rest wait for the cluster to place them). Checks for new answers without blocking."""
        if self._joining:
            done, _ = ray.wait(list(self._joining.values()), num_returns=len(self._joining), timeout=0)
            for worker_id, ref in list(self._joining.items()):
                if ref in done:
                    del self._joining[worker_id]
        return len(self.workers) - len(self._joining)

    def resize(self, size: int, *, allow_empty: bool = False) -> None:
        """Add or remove workers so that ``size`` remain (removing the newest first).

        ``allow_empty`` permits 0, for shutting the pool down."""
        if size < (0 if allow_empty else 1):
            raise ValueError(f"rollout.num_workers must be >= 1, got {size}")
        while len(self.workers) < size:
            worker_id = f"rollout-{self._next_id}"
            self._next_id += 1
            self.workers[worker_id] = self._factory(worker_id)
            self._joining[worker_id] = self.workers[worker_id].ping.remote()
        while len(self.workers) > size:
            worker_id = next(reversed(self.workers))
            self._joining.pop(worker_id, None)
            ray.kill(self.workers.pop(worker_id), no_restart=True)

    def joining(self) -> list[str]:
        """Workers created but not yet answering (the cluster has not placed them yet)."""
        return list(self._joining)

    def wait_until_ready(self) -> None:
        """Block until every worker has answered once (start-up), up to the timeout; each leaves
        :meth:`joining` as it answers."""
        deadline = time.monotonic() + self._timeout_s
        while self._joining:
            by_ref = {ref: w for w, ref in self._joining.items()}
            done, _ = ray.wait(list(by_ref), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                raise RuntimeError(f"rollout workers {self.joining()} did not start within "
                                   f"{self._timeout_s:.0f} s (can the cluster place them? see "
                                   "rollout.num_cpus_per_worker / num_gpus_per_worker)")
            for ref in done:
                worker_id = by_ref[ref]
                ping = ray.get(ref)
                log.info("rollout worker %s runs %s (%s thread(s))", worker_id,
                         ping.get("engine_info", ping.get("engine")), ping.get("threads"))
                del self._joining[worker_id]

    def ready_workers(self) -> list[str]:
        """Workers that have answered since they were created (joining ones are skipped).

        When none is ready yet, waits for the first to answer (up to the timeout)."""
        if self._joining:
            refs = list(self._joining.values())
            timeout = 0 if len(self._joining) < len(self.workers) else self._timeout_s
            done, _ = ray.wait(refs, num_returns=1 if timeout else len(refs), timeout=timeout)
            for worker_id, ref in list(self._joining.items()):
                if ref in done:
                    del self._joining[worker_id]  # answered (or died: dispatch will find out)
        return [w for w in self.workers if w not in self._joining]

    def describe(self, worker_id: str) -> str:
        """Worker id with its node, for error messages (best effort: the worker may be dead)."""
        try:
            info = ray.get(self.workers[worker_id].ping.remote(), timeout=5)  # KeyError: removed
            return f"{worker_id} (node {info.get('node_id', '?')}, pid {info.get('pid', '?')})"
        except Exception:  # noqa: BLE001 - describing must never mask the original failure
            return f"{worker_id} (node unknown: not answering or removed)"

    def generate(self, requests: list[GenerationRequest], submit: Submit,
                 *, max_inflight_per_worker: int = 1) -> list[GenerationResult]:
        """Run every request on some worker and return the results in request order.

        ``submit(actor, request)`` must start the call and return ``(batch_ref, info_ref)``.
        """
        return self.finish(self.start(requests, submit, max_inflight_per_worker=max_inflight_per_worker))

    def generate_batches(self, prompts: Sequence[str], record_ids: Sequence[str],
                         settings: SamplingSettings, weights: Any, *, greedy: bool = False,
                         timeout_s: float) -> list[RolloutBatch]:
        """Generate ``prompts`` with ``settings`` over every worker and fetch the batches (for
        evaluation, where the driver reads the completions; training leaves them in the store)."""
        requests = chunk_requests(prompts, record_ids, num_chunks=len(self))

        def submit(actor: Any, req: GenerationRequest):
            return actor.generate.options(num_returns=2).remote(
                req.prompts, req.record_ids, settings, weights, greedy=greedy)

        results = self.generate(requests, submit)
        return ray.get([r.batch_ref for r in results], timeout=timeout_s)

    def start(self, requests: list[GenerationRequest], submit: Submit,
              *, max_inflight_per_worker: int = 1) -> PendingGeneration:
        """Send as many requests as the workers take now; :meth:`finish` does the rest."""
        pending = PendingGeneration(list(requests), submit, max_inflight_per_worker)
        self._dispatch(pending)
        return pending

    def _dispatch(self, p: PendingGeneration) -> None:
        ready = self.ready_workers() if p.queue else []
        load: dict[str, int] = {w: 0 for w in ready}
        for _, worker_id, _, _ in p.inflight.values():
            load[worker_id] = load.get(worker_id, 0) + 1
        while p.queue:
            worker_id = least_loaded(ready, load, p.failed_workers, p.max_inflight_per_worker)
            if worker_id is None:
                return
            request = p.queue.popleft()
            request.attempts += 1
            batch_ref, info_ref = p.submit(self.workers[worker_id], request)
            p.inflight[info_ref] = (request, worker_id, batch_ref, time.monotonic())
            load[worker_id] = load.get(worker_id, 0) + 1

    def finish(self, p: PendingGeneration) -> list[GenerationResult]:
        """Wait for every request of ``p``, re-sending those whose worker failed or timed out."""
        while p.queue or p.inflight:
            self._dispatch(p)
            if not p.inflight:
                raise RuntimeError(
                    f"no rollout worker became ready within {self._timeout_s:.0f} s: the cluster "
                    "cannot place them (check rollout.num_cpus_per_worker / num_gpus_per_worker)")
            oldest = min(t for *_, t in p.inflight.values())
            wait_s = max(0.0, self._timeout_s - (time.monotonic() - oldest))
            ready, _ = ray.wait(list(p.inflight), num_returns=1, timeout=wait_s)
            if not ready:  # the oldest request ran past the timeout
                ready = [min(p.inflight, key=lambda ref: p.inflight[ref][3])]
            for info_ref in ready:
                request, worker_id, batch_ref, _ = p.inflight.pop(info_ref)
                try:
                    info = self._get_info(info_ref)
                except _WORKER_FAILURES as exc:
                    if isinstance(exc, GetTimeoutError):
                        ray.cancel(info_ref, force=False)
                    self._record_failure(worker_id, request, exc)
                    p.failed_workers.add(worker_id)
                    p.queue.appendleft(request)
                    continue
                except RayTaskError as exc:
                    raise RuntimeError(
                        f"rollout worker {self.describe(worker_id)} failed in generate() on "
                        f"request {request.index} ({len(request.prompts)} prompts): {exc}"
                    ) from exc
                p.results[request.index] = GenerationResult(batch_ref=batch_ref, info=info)
        return [p.results[i] for i in p.order]

    def _get_info(self, info_ref: ray.ObjectRef) -> dict[str, Any]:
        ready, _ = ray.wait([info_ref], timeout=0)
        if not ready:
            raise GetTimeoutError(f"no answer within rollout timeout {self._timeout_s:.0f} s")
        return ray.get(info_ref)

    def _record_failure(self, worker_id: str, request: GenerationRequest, exc: Exception) -> None:
        self.events.failures += 1
        what = f"rollout worker {worker_id} failed in generate() on request {request.index}: {type(exc).__name__}"
        if request.attempts >= self._max_attempts:
            raise RuntimeError(
                f"{what}; giving up after {request.attempts} attempts "
                f"(worker {self.describe(worker_id)}): {exc}"
            ) from exc
        self.events.redispatched += 1
        log.warning("%s; re-dispatching its %d prompt groups", what, len(request.prompts))
