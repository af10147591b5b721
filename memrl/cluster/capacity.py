"""Decisions about a cluster whose nodes come and go (spot instances, autoscalers).

Plain functions over snapshots of the cluster; :mod:`memrl.actors.cluster` takes the snapshots
from Ray and :mod:`memrl.actors.rollout_pool` / :mod:`memrl.train.loop` act on the answers.

- :func:`parse_worker_count`: ``rollout.num_workers`` as the config, ``control.yaml`` and
  ``memrl scale`` give it: a whole number >= 1 or ``auto``.
- :func:`auto_worker_count`: how many rollout workers the cluster's usable nodes hold once the
  other actors are placed (what ``auto`` means).
- :func:`worker_ceiling`: the most workers the cluster can ever hold; a larger request (from
  ``control.yaml`` or ``memrl scale``) is capped there.
- :func:`drain_plan`: which workers get no new prompt groups (their node is draining or gone)
  and which requests in flight are re-sent now because they will not finish before the
  node's deadline.
- :func:`critical_drains`: the driver's, a learner's or the memory service's node is draining:
  the run checkpoints and exits for a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from memrl.cluster.placement import Demand, Node, fit_problem, take
from memrl.config import MAX_ROLLOUT_WORKERS

AUTO = "auto"
WorkerCount = int | Literal["auto"]
# A request is re-sent when it would end less than this many seconds before its node's
# deadline: the node's processes may stop a little before the cloud's announced time.
DEADLINE_MARGIN_S = 2.0


@dataclass(frozen=True)
class ClusterState:
    """One look at the cluster: live nodes' resource totals and the draining ones' deadlines.

    ``draining`` maps a node id to its deadline in seconds since the epoch (``math.inf`` when
    the drain has no deadline)."""

    totals: dict[str, dict[str, float]] = field(default_factory=dict)  # node id -> resources
    draining: dict[str, float] = field(default_factory=dict)  # node id -> deadline (epoch s)

    @property
    def alive(self) -> set[str]:
        return set(self.totals)

    def usable(self) -> dict[str, dict[str, float]]:
        """Live nodes that are not draining (where new actors may go)."""
        return {n: t for n, t in self.totals.items() if n not in self.draining}


def draining_deadlines(raw_ms: Mapping[str, int]) -> dict[str, float]:
    """Ray's ``{node id: deadline in ms since the epoch}`` (0: no deadline) in seconds."""
    return {node: (ms / 1000.0 if ms else math.inf) for node, ms in raw_ms.items()}


def parse_worker_count(value: object, *, key: str = "rollout.num_workers") -> WorkerCount:
    """``value`` as a worker count: a whole number >= 1 or ``"auto"``; ValueError naming ``key``
    and the value otherwise (strings of digits are accepted: command lines give them)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} = {value!r}: expected a whole number >= 1 or 'auto'")
    if value < 1:
        raise ValueError(f"{key} = {value}: a run needs a worker; expected a whole number >= 1 or 'auto'")
    return value


def auto_worker_count(nodes: Mapping[str, Mapping[str, float]], worker: Mapping[str, float],
                      others: Sequence[Demand] = ()) -> int:
    """How many workers asking for ``worker`` fit on ``nodes`` (resource totals) once the
    ``others`` (learners, memory) are packed first; at least 1, so that a run always asks for
    a worker (it waits for the cluster to place it).

    A worker that asks for nothing would fit without end: it counts one per node."""
    free = [Node.from_totals(name, totals) for name, totals in nodes.items()]
    for demand in sorted(others, key=lambda d: (-d.resources.get("GPU", 0), -d.resources.get("CPU", 0))):
        node = next((n for n in free if fit_problem(demand.resources, n) is None), None)
        if node is not None:
            take(demand.resources, node)
    if not any(v > 0 for v in worker.values()):
        return max(1, len(free))
    count = 0
    for node in free:
        while fit_problem(worker, node) is None:
            take(worker, node)
            count += 1
    return max(1, count)


def worker_ceiling(state: ClusterState, worker: Mapping[str, float], others: Sequence[Demand] = (), *,
                   autoscales: bool = False) -> int:
    """The most rollout workers asking for ``worker`` that the cluster can ever hold: what all
    its live nodes (draining ones too: a drained node is usually replaced) hold once the
    ``others`` are packed; ``MAX_ROLLOUT_WORKERS`` when it adds nodes on demand
    (``autoscales``) or a worker asks for nothing. Never above ``MAX_ROLLOUT_WORKERS``."""
    if autoscales or not any(v > 0 for v in worker.values()):
        return MAX_ROLLOUT_WORKERS
    return min(MAX_ROLLOUT_WORKERS, auto_worker_count(state.totals, worker, others))


def target_worker_count(requested: WorkerCount, state: ClusterState, worker: Mapping[str, float],
                        others: Sequence[Demand] = ()) -> int:
    """The pool size for ``requested`` now: the number itself, or what the usable nodes hold."""
    if requested == AUTO:
        return auto_worker_count(state.usable(), worker, others)
    return int(requested)


@dataclass(frozen=True)
class InFlight:
    """A request in flight: its key, the worker running it and when it was sent (monotonic s,
    the same clock as ``now`` in :func:`drain_plan`)."""

    key: object
    worker: str
    started: float


@dataclass(frozen=True)
class DrainPlan:
    """What to do about draining and vanished nodes now."""

    avoid: frozenset[str]  # workers that get no new requests (node draining or gone)
    gone: frozenset[str]  # workers whose node is no longer alive (Ray restarts them elsewhere)
    resend: tuple[object, ...]  # keys of requests to send again elsewhere now
    retire: frozenset[str]  # workers to replace: on a draining node and idle after the resend


def drain_plan(worker_nodes: Mapping[str, str | None], inflight: Sequence[InFlight],
               state: ClusterState, *, now: float, wall_now: float,
               expected_s: float | None) -> DrainPlan:
    """Decide for the workers of ``worker_nodes`` (worker id -> node id, None: not known yet).

    A worker whose node is draining or no longer alive gets no new requests. A request in
    flight on a draining node is re-sent when it would not finish ``DEADLINE_MARGIN_S`` before
    the node's deadline: sent at ``started``, it should end at ``started + expected_s``
    (``expected_s`` None: no request has finished yet, so nothing says it will make it).
    ``now`` is the monotonic clock of ``InFlight.started``; ``wall_now`` the epoch clock of
    the deadlines. Workers on draining nodes with nothing left in flight are retired (replaced
    by new workers that Ray places on other nodes)."""
    alive = state.alive
    draining_workers = {w for w, n in worker_nodes.items() if n is not None and n in state.draining}
    gone = {w for w, n in worker_nodes.items() if n is not None and n not in alive}
    resend = []
    for request in inflight:
        node = worker_nodes.get(request.worker)
        if request.worker not in draining_workers or node is None:
            continue
        left_s = state.draining[node] - wall_now  # seconds until the node goes
        if expected_s is None:
            will_finish = math.isinf(left_s)
        else:
            still_needed = max(0.0, request.started + expected_s - now)
            will_finish = still_needed + DEADLINE_MARGIN_S <= left_s
        if not will_finish:
            resend.append(request.key)
    busy = {r.worker for r in inflight if r.key not in set(resend)}
    return DrainPlan(avoid=frozenset(draining_workers | gone), gone=frozenset(gone), resend=tuple(resend),
                     retire=frozenset(draining_workers - busy))


def critical_drains(roles: Mapping[str, str | None], state: ClusterState) -> list[tuple[str, str, float]]:
    """``(role, node id, deadline)`` for every role (``driver``, ``learner rank 0``, ``memory
    service`` ...) whose node is draining, soonest deadline first."""
    hits = [(role, node, state.draining[node]) for role, node in roles.items()
            if node is not None and node in state.draining]
    return sorted(hits, key=lambda hit: hit[2])
