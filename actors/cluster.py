"""The run's connection to its Ray cluster: joining or starting it, the nodes' resources and
drains (:class:`ClusterWatch`), and the start-up line that names the actors not ready yet
(pending placement or starting)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import ray
from ray._private import state as ray_state

from memrl.cluster.capacity import ClusterState, draining_deadlines
from memrl.cluster.placement import Demand, waiting_report
from memrl.config import Config

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> None:
    """Connect to Ray as the config says, and say which cluster the run uses.

    ``ray.address`` (or ``RAY_ADDRESS``, set for a ``ray job submit`` job) names a cluster to
    join; ``ray.address=local`` starts a new one for this run. Without either, the run joins a
    cluster that ``ray start`` runs on this machine, as Ray's own ``ray.init()`` does (its
    resources then apply, not ``ray.num_cpus``), and otherwise starts its own with
    ``ray.num_cpus``. One torch thread per process unless an actor is given more CPUs."""
    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MEMRL_CACHE", "DS_ACCELERATOR"):
        if key in os.environ:
            env[key] = os.environ[key]
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or _local_cluster_address()
    if address and address != "local":
        ray.init(address=address, **kwargs)
        cpus = ray.cluster_resources().get("CPU", 0)
        how = "the cluster named by ray.address/RAY_ADDRESS" if cfg.ray.address or \
            os.environ.get("RAY_ADDRESS") else "the cluster `ray start` runs on this machine"
        ignored = f"; ray.num_cpus={cfg.ray.num_cpus} does not apply to it" if cfg.ray.num_cpus else ""
        print(f"memrl: joined {how} at {address} ({cpus:g} CPUs){ignored}; set ray.address=local "
              "to start a separate cluster for this run", file=sys.stderr, flush=True)
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


def _local_cluster_address() -> str | None:
    """The address ``ray start`` recorded on this machine (what a plain ``ray.init()`` joins)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        # Ray annotates addr as str, but takes None as its docstring says (what ray.init() does)
        return canonicalize_bootstrap_address(None)  # pyright: ignore[reportArgumentType]
    except Exception:  # noqa: BLE001 - private API moved or stale file: start a local cluster
        return None


def node_totals() -> list[dict[str, float]]:
    """Each live node's resource totals (for :func:`memrl.cluster.placement.check_fits`)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def cluster_state() -> ClusterState:
    """The live nodes' resource totals and the draining nodes' deadlines, from the GCS (a node
    being drained, e.g. on a preemption notice, is still alive until it goes)."""
    totals = {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")}
    # Ray's own accessor for the GCS's list of draining nodes (what `ray drain-node` and a
    # raylet's SIGTERM handler create); there is no public API for it in Ray 2.60.
    raw = ray_state.state.get_draining_nodes()
    return ClusterState(totals=totals, draining={n: d for n, d in draining_deadlines(raw).items()
                                                 if n in totals})


class ClusterWatch:
    """:func:`cluster_state`, asked of the GCS at most once every ``every_s`` seconds (the pool
    looks before every dispatch; a preemption notice gives tens of seconds)."""

    def __init__(self, every_s: float = 1.0, read: Callable[[], ClusterState] = cluster_state):
        self.every_s = every_s
        self._read = read
        self._last: tuple[float, ClusterState] | None = None

    def state(self, *, fresh: bool = False) -> ClusterState:
        """The cluster now (``fresh``) or as seen at most ``every_s`` seconds ago."""
        now = time.monotonic()
        if fresh or self._last is None or now - self._last[0] >= self.every_s:
            self._last = (now, self._read())
        return self._last[1]


class StartupReporter:
    """While running, prints every ``every_s`` seconds what start-up waits for: the phase, the
    actors memrl created there that have not answered yet (its own list, so it needs no
    dashboard) and the cluster's free resources.

    ``waiting_for(phase, waiting)`` starts a phase; ``waiting()`` returns the actors still
    waiting and is called from the reporter's thread, so it must only read (a snapshot)."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self._phase_name = "start-up"
        self._waiting: Callable[[], Sequence[Demand]] = list
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memrl-startup")
        self._started = time.monotonic()

    def waiting_for(self, phase_name: str, waiting: Callable[[], Sequence[Demand]]) -> None:
        self._phase_name, self._waiting = phase_name, waiting

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                line = waiting_report(self._phase_name, time.monotonic() - self._started,
                                      list(self._waiting()), ray.available_resources())
            except Exception:  # reporting must never break start-up
                log.debug("start-up report skipped", exc_info=True)
                continue
            print(line, file=sys.stderr, flush=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
