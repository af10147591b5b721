"""Driver-side pool of rollout workers: dispatch, live membership, re-dispatch, drains.

The pool owns only metadata. Each request returns two object refs from the worker: the
``RolloutBatch`` (left in the object store for the reward step and the learners) and a small
info dict the driver reads to learn that the request succeeded. A request whose worker dies or
exceeds the timeout is sent again to another worker, so no prompt group is lost (results are
kept by request index: a late answer of a re-sent request is dropped, never counted twice).

Membership follows the cluster (:class:`~memrl.actors.cluster.ClusterWatch`): a worker that
failed, or whose node is gone, waits for Ray to restart it (``max_restarts=-1``) outside the
dispatch, probed once a second, since a restart stays pending while no node can hold it and
calls to it fail at once meanwhile; it rejoins with the weights of its next request. A worker
on a draining node (preemption notice) gets no new requests, its requests that will not finish
before the node's deadline are re-sent, and once idle it is replaced by a new worker that Ray
places elsewhere. ``rollout.num_workers`` is a target (a number, or ``auto``: what the usable
nodes hold, see :mod:`memrl.cluster.capacity`), applied at each step's start.
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

from memrl.actors.cluster import ClusterWatch
from memrl.cluster.capacity import (
    ClusterState,
    DrainPlan,
    InFlight,
    WorkerCount,
    drain_plan,
    parse_worker_count,
    target_worker_count,
    worker_ceiling,
)
from memrl.cluster.placement import Demand, cluster_autoscales
from memrl.cluster.requests import GenerationRequest, chunk_requests, least_loaded
from memrl.config import MAX_ROLLOUT_WORKERS
from memrl.errors import RuntimeFault
from memrl.rollout.engine import SamplingSettings
from memrl.types import RolloutBatch

log = logging.getLogger(__name__)

# Errors that mean "this worker could not finish the request", as opposed to a bug in the
# request itself (a RayTaskError wrapping a Python exception raised by generate()).
_WORKER_FAILURES = (RayActorError, GetTimeoutError)
PROBE_EVERY_S = 1.0  # a worker waiting for its restart is pinged this often
_DURATIONS_KEPT = 20  # recent request times that estimate how long a request runs


class RolloutWorkerStartError(RuntimeFault):
    """A rollout worker's constructor raised: Ray does not restart it, and no retry would help."""

    label = "a rollout worker could not start"
    hint = "fix what its error names; the worker's whole output is in OUTPUT_DIR/logs/ (its id).log"


def _start_failure(worker_id: str, exc: RayActorError) -> RolloutWorkerStartError:
    """The worker's error, from the last line of the traceback Ray reports (``Type: message``)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return RolloutWorkerStartError(f"{worker_id}: {lines[-1] if lines else type(exc).__name__}")


@dataclass
class GenerationResult:
    batch_ref: ray.ObjectRef  # -> RolloutBatch, never fetched by the driver
    info: dict[str, Any]  # worker_id, tokens, seconds, weight_version, sync_seconds ...


@dataclass
class PoolEvents:
    """Failure counters since the pool was created (logged as health metrics)."""

    failures: int = 0
    redispatched: int = 0
    preempted_workers: int = 0  # workers lost to a node that went or began draining
    draining_nodes_seen: int = 0  # nodes seen draining (preemption notices)
    resent_groups: int = 0  # prompt groups sent again after a failure or ahead of a deadline
    lost_work_s: float = 0.0  # generation seconds of failed or abandoned requests


Submit = Callable[[Any, GenerationRequest], tuple[ray.ObjectRef, ray.ObjectRef]]


@dataclass
class PendingGeneration:
    """Requests of one step in flight: queued, running, and finished results."""

    queue: deque[GenerationRequest]
    submit: Submit
    inflight: dict[ray.ObjectRef, tuple[GenerationRequest, str, ray.ObjectRef, float]] = field(default_factory=dict)
    results: dict[int, GenerationResult] = field(default_factory=dict)
    failed_workers: set[str] = field(default_factory=set)
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = [r.index for r in self.queue]


@dataclass
class _Probe:
    """A ping to a worker that is starting or restarting, and when it was sent."""

    ref: ray.ObjectRef
    sent: float


class RolloutPool:
    """A resizable set of rollout-worker actors with least-loaded dispatch.

    Args:
        factory: creates the actor for a worker id (the caller sets resources and restarts).
        size: the target number of workers: a whole number, or ``"auto"`` (as many as the
            usable nodes hold once ``others`` are placed; needs ``worker_demand``).
        timeout_s: a request still running after this long counts as failed and is re-sent.
        max_attempts: a request that fails this many times aborts the step with an error that
            names the worker, its node and the call.
        watch: the cluster's nodes and drains (None: a :class:`ClusterWatch` of this cluster).
        worker_demand: one worker's resources (for ``auto``).
        others: the run's other actors (learners, memory), placed before the workers.
    """

    def __init__(self, factory: Callable[[str], Any], size: WorkerCount, *, timeout_s: float,
                 max_attempts: int = 3, watch: ClusterWatch | None = None,
                 worker_demand: dict[str, float] | None = None, others: list[Demand] | None = None):
        self._factory = factory
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._next_id = 0
        self._watch = watch or ClusterWatch()
        self._worker_demand = dict(worker_demand or {})
        self._others = list(others or [])
        self.requested: WorkerCount = parse_worker_count(size)
        # The config's own count (at most MAX_ROLLOUT_WORKERS) waits for nodes that join later, as
        # a spot cluster's do; only a later request (control.yaml, memrl scale) is capped below.
        self._configured = self.requested
        self._capped: tuple[int, int] | None = None  # the request last capped, and the cap
        self.workers: dict[str, Any] = {}
        # worker id -> its node (None until it first answers); workers move when restarted.
        self._nodes: dict[str, str | None] = {}
        # worker id -> the engine it runs, as it last answered ("vllm on cpu", ...)
        self._engines: dict[str, str] = {}
        # worker id -> pending ping while the actor starts or restarts; dispatch skips it until
        # it answers (a worker the cluster cannot place yet must not hold requests hostage).
        self._joining: dict[str, _Probe] = {}
        self._preempted: set[str] = set()  # workers already counted in events.preempted_workers
        self._drains_seen: set[str] = set()  # nodes already counted in events.draining_nodes_seen
        self._durations: deque[float] = deque(maxlen=_DURATIONS_KEPT)
        self.events = PoolEvents()
        self.refresh()

    def __len__(self) -> int:
        return len(self.workers)

    def cluster(self, *, fresh: bool = False) -> ClusterState:
        """The cluster now (``fresh``) or as the pool last saw it (at most a second old)."""
        return self._watch.state(fresh=fresh)

    def num_running(self) -> int:
        """Workers that have answered since they were created or restarted: the ones really
        generating (the rest wait for the cluster to place them). Does not block."""
        self._poll_joining()
        return len(self.workers) - len(self._joining)

    def set_target(self, size: WorkerCount) -> None:
        """Ask for ``size`` workers (a number or ``auto``); applied now and at each step."""
        self.requested = parse_worker_count(size)
        self.refresh()

    def target(self) -> int:
        """The pool size that ``requested`` means for the cluster as it is now: the config's own
        count as it is (workers beyond the nodes wait to be placed), a later request's capped at
        what the cluster can ever hold (:func:`worker_ceiling`, said once per request)."""
        if not isinstance(self.requested, int):
            return target_worker_count(self.requested, self.cluster(fresh=True), self._worker_demand,
                                       self._others)
        if self.requested == self._configured:
            return self.requested
        ceiling = worker_ceiling(self.cluster(), self._worker_demand, self._others,
                                 autoscales=cluster_autoscales())
        if self.requested <= ceiling:
            return self.requested
        if self._capped != (self.requested, ceiling):
            self._capped = (self.requested, ceiling)
            why = (f"the cluster's nodes hold {ceiling} beside the learners and the memory service"
                   if ceiling < MAX_ROLLOUT_WORKERS else f"a run has at most {MAX_ROLLOUT_WORKERS}")
            log.warning("rollout.num_workers = %d is more than this run can ever place (%s): running %d; "
                        "training goes on", self.requested, why, ceiling)
        return ceiling

    def refresh(self) -> None:
        """Bring the pool to :meth:`target` (called at the start of every step)."""
        wanted = self.target()
        if wanted != len(self.workers) and self.workers:
            log.info("rollout workers: %d -> %d (rollout.num_workers = %s)", len(self.workers),
                     wanted, self.requested)
        self.resize(wanted)

    def resize(self, size: int, *, allow_empty: bool = False) -> None:
        """Add or remove workers so that ``size`` remain; removes first those not answering
        (pending placement or restart), then the newest.

        ``allow_empty`` permits 0, for shutting the pool down."""
        if size < (0 if allow_empty else 1):
            raise ValueError(f"rollout.num_workers must be >= 1, got {size}")
        while len(self.workers) < size:
            self._add()
        while len(self.workers) > size:
            waiting = [w for w in self.workers if w in self._joining]
            self._remove(waiting[-1] if waiting else next(reversed(self.workers)))

    def _add(self) -> str:
        worker_id = f"rollout-{self._next_id}"
        self._next_id += 1
        self.workers[worker_id] = self._factory(worker_id)
        self._nodes[worker_id] = None
        self._joining[worker_id] = _Probe(self.workers[worker_id].ping.remote(), time.monotonic())
        return worker_id

    def _remove(self, worker_id: str) -> None:
        self._joining.pop(worker_id, None)
        self._nodes.pop(worker_id, None)
        self._engines.pop(worker_id, None)
        ray.kill(self.workers.pop(worker_id), no_restart=True)

    def worker_nodes(self) -> dict[str, str | None]:
        """Each worker's node as it last answered (None: it has not answered yet)."""
        return dict(self._nodes)

    def engines(self) -> dict[str, str]:
        """The engine each worker that has answered runs, e.g. ``vllm on cpu, 1 thread(s)``."""
        return {w: e for w, e in self._engines.items() if w in self.workers}

    def joining(self) -> list[str]:
        """Workers created or restarting but not answering yet (the cluster has not placed them)."""
        return list(self._joining)

    def _rejoin(self, worker_id: str) -> None:
        """Take ``worker_id`` out of the dispatch until a probe finds it restarted."""
        if worker_id in self.workers and worker_id not in self._joining:
            self._joining[worker_id] = _Probe(self.workers[worker_id].ping.remote(), time.monotonic())

    def _poll_joining(self, timeout: float = 0.0) -> list[str]:
        """Check the probes (waiting up to ``timeout`` s for one answer); returns the workers
        that answered. A probe that failed (the restart is pending) is sent again a second
        later."""
        if not self._joining:
            return []
        by_ref = {p.ref: w for w, p in self._joining.items()}
        done, _ = ray.wait(list(by_ref), num_returns=1 if timeout else len(by_ref), timeout=timeout)
        if timeout and done:  # one answered: collect the others that did too
            done, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        answered = []
        now = time.monotonic()
        for ref in done:
            worker_id = by_ref[ref]
            try:
                ping = ray.get(ref)
            except RayActorError as exc:  # restarting; calls fail at once until it is back ...
                if getattr(exc, "actor_init_failed", False):  # ... unless its constructor raised
                    raise _start_failure(worker_id, exc) from exc
                continue
            del self._joining[worker_id]
            if ping.get("node_id") != self._nodes.get(worker_id):  # restarted elsewhere
                self._preempted.discard(worker_id)
            self._nodes[worker_id] = ping.get("node_id")
            self._engines[worker_id] = f"{ping.get('engine_info', ping.get('engine'))}, " \
                f"{ping.get('threads')} thread(s)"
            log.info("rollout worker %s runs %s (%s thread(s)) on node %s", worker_id,
                     ping.get("engine_info", ping.get("engine")), ping.get("threads"),
                     str(ping.get("node_id", "?"))[:12])
            answered.append(worker_id)
        for worker_id, probe in self._joining.items():
            if probe.ref in done and now - probe.sent >= PROBE_EVERY_S:
                self._joining[worker_id] = _Probe(self.workers[worker_id].ping.remote(), now)
        return answered

    def wait_until_ready(self) -> None:
        """Block until every worker has answered once (start-up), up to the timeout; each leaves
        :meth:`joining` as it answers."""
        deadline = time.monotonic() + self._timeout_s
        while self._joining:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"rollout workers {self.joining()} did not start within "
                                   f"{self._timeout_s:.0f} s (can the cluster place them? see "
                                   "rollout.num_cpus_per_worker / num_gpus_per_worker)")
            if not self._poll_joining(timeout=min(left, PROBE_EVERY_S)):
                time.sleep(0.05)  # failed probes return at once: do not spin

    def ready_workers(self, exclude: frozenset[str] = frozenset(), *, block: bool = True) -> list[str]:
        """Workers that have answered since they were created or restarted, less ``exclude``
        (the others are skipped). With ``block``, when none is ready, waits for the first to
        answer (up to the timeout)."""
        self._poll_joining()

        def ready() -> list[str]:
            return [w for w in self.workers if w not in self._joining and w not in exclude]

        deadline = time.monotonic() + self._timeout_s
        while block and not ready() and self._joining and time.monotonic() < deadline:
            if not self._poll_joining(timeout=PROBE_EVERY_S):
                time.sleep(0.05)
        return ready()

    def _expected_request_s(self) -> float | None:
        """How long a request runs, from the recent ones (the longest: deadlines are hard)."""
        return max(self._durations) if self._durations else None

    def _plan(self, p: PendingGeneration) -> DrainPlan:
        """What the cluster's drains and losses mean for ``p`` now (and count the preempted)."""
        state = self.cluster()
        if any(n is not None and n not in state.totals for n in self._nodes.values()):
            state = self.cluster(fresh=True)  # gone, or a node newer than the last look
        self._drains_seen.update(state.draining)
        self.events.draining_nodes_seen = len(self._drains_seen)
        inflight = [InFlight(ref, w, t) for ref, (_, w, _, t) in p.inflight.items()]
        plan = drain_plan(self._nodes, inflight, state, now=time.monotonic(), wall_now=time.time(),
                          expected_s=self._expected_request_s())
        for worker_id in sorted(plan.avoid - self._preempted):
            self._preempted.add(worker_id)
            self.events.preempted_workers += 1
            node = self._nodes.get(worker_id)
            how = "is draining" if node in state.draining else "is gone"
            log.warning("rollout worker %s: its node %s %s; no new prompt groups go to it",
                        worker_id, str(node)[:12], how)
        return plan

    def describe(self, worker_id: str) -> str:
        """Worker id with its node, for error messages (best effort: the worker may be dead)."""
        try:
            ping: ray.ObjectRef = self.workers[worker_id].ping.remote()  # KeyError: removed
            info = ray.get(ping, timeout=5)
            return f"{worker_id} (node {info.get('node_id', '?')}, pid {info.get('pid', '?')})"
        except Exception:  # noqa: BLE001 - describing must never mask the original failure
            return f"{worker_id} (node unknown: not answering or removed)"

    def generate(self, requests: list[GenerationRequest], submit: Submit) -> list[GenerationResult]:
        """Run every request on some worker and return the results in request order.

        ``submit(actor, request)`` must start the call and return ``(batch_ref, info_ref)``.
        """
        return self.finish(self.start(requests, submit))

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

    def start(self, requests: list[GenerationRequest], submit: Submit) -> PendingGeneration:
        """Send as many requests as the workers take now (one each); :meth:`finish` does the rest."""
        pending = PendingGeneration(deque(requests), submit)
        self._dispatch(pending)
        return pending

    def _dispatch(self, p: PendingGeneration) -> None:
        plan = self._plan(p)
        for info_ref in plan.resend:  # will not finish before its node's deadline
            assert isinstance(info_ref, ray.ObjectRef)  # the plan's keys are p.inflight's
            request, worker_id, _, started = p.inflight.pop(info_ref)
            ray.cancel(info_ref, force=False)
            self._lose(request, time.monotonic() - started)
            log.warning("re-sending request %d (%d prompt groups) of rollout worker %s: its node's "
                        "deadline comes before it would finish", request.index, len(request.prompts),
                        worker_id)
            p.queue.appendleft(request)
        for worker_id in sorted(plan.retire):  # idle on a draining node: replace it elsewhere
            if worker_id in self.workers:
                log.warning("rollout worker %s retired ahead of its node's deadline; starting a "
                            "replacement", worker_id)
                self._remove(worker_id)
                self._preempted.discard(worker_id)
                self._add()
        for worker_id in plan.gone:  # out of the dispatch until Ray has restarted it elsewhere
            self._rejoin(worker_id)
        ready = self.ready_workers(exclude=plan.avoid, block=not p.inflight) if p.queue else []
        busy = {worker_id for _, worker_id, _, _ in p.inflight.values()}
        while p.queue:
            worker_id = least_loaded(ready, busy, p.failed_workers)
            if worker_id is None:
                return
            request = p.queue.popleft()
            request.attempts += 1
            batch_ref, info_ref = p.submit(self.workers[worker_id], request)
            p.inflight[info_ref] = (request, worker_id, batch_ref, time.monotonic())
            busy.add(worker_id)

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
            # Wake at least once a second: a drain notice is acted on while requests run.
            ready, _ = ray.wait(list(p.inflight), num_returns=1, timeout=min(wait_s, PROBE_EVERY_S))
            if not ready and wait_s > PROBE_EVERY_S:
                continue
            if not ready:  # the oldest request ran past the timeout
                ready = [min(p.inflight, key=lambda ref: p.inflight[ref][3])]
            for info_ref in ready:
                if info_ref not in p.inflight:  # re-sent meanwhile by the drain plan
                    continue
                request, worker_id, batch_ref, started = p.inflight.pop(info_ref)
                try:
                    info = self._get_info(info_ref)
                except _WORKER_FAILURES as exc:
                    if isinstance(exc, GetTimeoutError):
                        ray.cancel(info_ref, force=False)
                    else:  # the actor died: out of the dispatch until Ray has restarted it
                        self._rejoin(worker_id)
                    self._record_failure(worker_id, request, exc)
                    self._lose(request, time.monotonic() - started)
                    p.failed_workers.add(worker_id)
                    p.queue.appendleft(request)
                    continue
                except RayTaskError as exc:
                    raise RuntimeError(
                        f"rollout worker {self.describe(worker_id)} failed in generate() on "
                        f"request {request.index} ({len(request.prompts)} prompts): {exc}"
                    ) from exc
                self._durations.append(time.monotonic() - started)
                p.results[request.index] = GenerationResult(batch_ref=batch_ref, info=info)
        return [p.results[i] for i in p.order]

    def _lose(self, request: GenerationRequest, seconds: float) -> None:
        """Count ``request``'s prompt groups as re-sent and its ``seconds`` as work lost."""
        self.events.resent_groups += len(request.prompts)
        self.events.lost_work_s += seconds

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
