"""Can the cluster hold the run's actors? Checked before creating them, reported while waiting.

A fixed-size cluster that cannot place every actor at once would otherwise leave the run silent
until ``trainer.timeout_s``. :func:`check_fits` packs the actors' resource demands onto the
nodes' totals (first fit, largest first) and fails at once with the list that does not fit;
with ``MEMRL_CLUSTER_AUTOSCALES=1`` (a cluster that adds nodes on demand) it only warns.
:class:`PendingReporter` says every few seconds, while start-up waits, what it waits for.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from memrl.config import Config
from memrl.errors import RuntimeFault

log = logging.getLogger(__name__)

AUTOSCALES_ENV = "MEMRL_CLUSTER_AUTOSCALES"


@dataclass(frozen=True)
class Demand:
    """One actor's resources (CPU, GPU and custom resources) and the config keys that set them."""

    actor: str
    resources: dict[str, float]
    keys: str


def run_demands(cfg: Config) -> list[Demand]:
    """Every actor a run of ``cfg`` creates at start-up, with its resources."""
    def res(cpus: float, gpus: float, extra: dict[str, float] | None = None) -> dict[str, float]:
        out = {"CPU": float(cpus), "GPU": float(gpus), **{k: float(v) for k, v in (extra or {}).items()}}
        return {k: v for k, v in out.items() if v > 0}

    r, lr, m = cfg.rollout, cfg.learner, cfg.memory
    demands = [Demand(f"rollout worker {i}", res(r.num_cpus_per_worker, r.num_gpus_per_worker, r.resources),
                      "rollout.num_workers / num_cpus_per_worker / num_gpus_per_worker / resources")
               for i in range(r.num_workers)]
    demands += [Demand(f"learner rank {i}", res(lr.num_cpus, lr.num_gpus, lr.resources),
                       "learner.num_learners / num_cpus / num_gpus / resources")
                for i in range(lr.num_learners)]
    if cfg.uses_memory:
        demands += [Demand(f"memory shard {i}", res(m.num_cpus, m.num_gpus),
                           "memory.num_shards / num_cpus / num_gpus") for i in range(m.num_shards)]
    return demands


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) or "nothing"


def unplaceable(demands: list[Demand], nodes: list[dict[str, float]]) -> list[Demand]:
    """The demands left over after packing all of them onto ``nodes`` (resource totals)."""
    free = [dict(n) for n in nodes]
    left = []
    for d in sorted(demands, key=lambda d: (-d.resources.get("GPU", 0), -d.resources.get("CPU", 0))):
        for node in free:
            if all(node.get(k, 0.0) + 1e-9 >= v for k, v in d.resources.items()):
                for k, v in d.resources.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            left.append(d)
    return left


def _node_totals() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_fits(cfg: Config) -> None:
    """Raise :class:`RuntimeFault` naming the actors the cluster can never hold at once."""
    demands = run_demands(cfg)
    nodes = _node_totals()
    left = unplaceable(demands, nodes)
    if not left:
        return
    asked: dict[str, float] = {}
    for d in demands:
        for k, v in d.resources.items():
            asked[k] = asked.get(k, 0.0) + v
    node_text = "; ".join(f"node {i}: {_fmt({k: v for k, v in n.items() if k in ('CPU', 'GPU') or k in asked})}"
                          for i, n in enumerate(nodes))
    listed = ", ".join(f"{d.actor} ({_fmt(d.resources)})" for d in left[:8]) + \
        (f" and {len(left) - 8} more" if len(left) > 8 else "")
    message = f"the Ray cluster cannot hold this run's actors: no room for {listed}"
    where = f"the run asks for {_fmt(asked)} in all; the cluster has {len(nodes)} node(s): {node_text}"
    hint = (f"ask for less ({left[0].keys}; ray.num_cpus when memrl starts the cluster), or add "
            f"nodes; if the cluster autoscales, set {AUTOSCALES_ENV}=1 to wait for new nodes")
    if os.environ.get(AUTOSCALES_ENV, "") not in ("", "0"):
        log.warning("%s (%s); waiting for the autoscaler (%s=1)", message, where, AUTOSCALES_ENV)
        return
    raise RuntimeFault(message, where=where, hint=hint)


def pending_actors() -> list[str] | None:
    """Actors of this job waiting to be placed, with what they need (None: state API not there)."""
    try:
        from ray.util.state import list_actors

        job = ray.get_runtime_context().get_job_id()
        actors = list_actors(filters=[("state", "=", "PENDING_CREATION"), ("job_id", "=", job)],
                             detail=True, timeout=5, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - no dashboard (local cluster without one): fall back
        return None
    out = []
    for a in actors:
        needs = getattr(a, "required_resources", None) or {}
        out.append(f"{getattr(a, 'class_name', '?')} ({_fmt(dict(needs))})")
    return out


class PendingReporter:
    """While running, prints every ``every_s`` seconds what start-up is waiting for: the phase,
    the actors not placed yet (when Ray's state API answers) and the cluster's free resources."""

    def __init__(self, phase_name: str, every_s: float = 10.0):
        self.phase_name, self.every_s = phase_name, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memrl-pending")
        self._started = time.monotonic()

    def set_phase(self, phase_name: str) -> None:
        self.phase_name = phase_name

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                free = _fmt({k: v for k, v in ray.available_resources().items()
                             if k in ("CPU", "GPU") or not k.startswith(("node:", "memory", "object_store"))})
                pending = pending_actors()
            except Exception:  # noqa: BLE001 - reporting must never break start-up
                continue
            waiting = (f"; not placed yet: {', '.join(pending)}" if pending else
                       "" if pending is not None else "")
            print(f"memrl: still in {self.phase_name} after {time.monotonic() - self._started:.0f} s"
                  f"{waiting}; free in the cluster now: {free}", file=sys.stderr, flush=True)

    def __enter__(self) -> "PendingReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
