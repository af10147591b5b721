"""Can the cluster hold the run's actors? Checked before creating them, reported while waiting.

A fixed-size cluster that cannot place every actor at once would otherwise leave the run silent
until ``trainer.timeout_s``. :func:`check_fits` packs the actors' resource demands onto the
nodes' totals (first fit, largest first) and fails at once with the list that does not fit;
with ``MEMRL_CLUSTER_AUTOSCALES=1`` (a cluster that adds nodes on demand) it only warns.
:func:`waiting_report` is the line start-up prints every few seconds while actors it created
have not answered yet (:func:`memrl.actors.startup.wait_for_phases` prints it). Plain functions: the
node totals and free resources come from the caller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def _resources(cpus: float, gpus: float, extra: Mapping[str, float] | None = None) -> dict[str, float]:
    out = {"CPU": float(cpus), "GPU": float(gpus), **{k: float(v) for k, v in (extra or {}).items()}}
    return {k: v for k, v in out.items() if v > 0}


def rollout_demand(cfg: Config, name: str) -> Demand:
    """The rollout worker ``name``'s resources."""
    r = cfg.rollout
    return Demand(name, _resources(r.num_cpus_per_worker, r.num_gpus_per_worker, r.resources),
                  "rollout.num_workers / num_cpus_per_worker / num_gpus_per_worker / resources")


def learner_demands(cfg: Config) -> list[Demand]:
    """The learner ranks' resources."""
    lr = cfg.learner
    return [Demand(f"learner rank {i}", _resources(lr.num_cpus, lr.num_gpus, lr.resources),
                   "learner.num_learners / num_cpus / num_gpus / resources")
            for i in range(lr.num_learners)]


def memory_demands(cfg: Config) -> list[Demand]:
    """The memory shards' resources (none for a method without memory)."""
    m = cfg.memory
    return [Demand(f"memory shard {i}", _resources(m.num_cpus, m.num_gpus, m.resources),
                   "memory.num_shards / num_cpus / num_gpus / resources")
            for i in range(m.num_shards if cfg.uses_memory else 0)]


def initial_workers(cfg: Config) -> int:
    """Rollout workers the start-up check counts: ``rollout.num_workers``, or 1 for ``auto``
    (which takes what the cluster holds beyond that)."""
    n = cfg.rollout.num_workers
    return 1 if n == "auto" else n


def run_demands(cfg: Config) -> list[Demand]:
    """Every actor a run of ``cfg`` creates at start-up, with its resources."""
    return ([rollout_demand(cfg, f"rollout worker {i}") for i in range(initial_workers(cfg))]
            + learner_demands(cfg) + memory_demands(cfg))


def format_resources(resources: Mapping[str, float]) -> str:
    """``{"CPU": 1.0, "GPU": 0.5}`` as ``CPU 1, GPU 0.5``."""
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) or "nothing"


def _listing(demands: Sequence[Demand], limit: int = 8) -> str:
    return ", ".join(f"{d.actor} ({format_resources(d.resources)})" for d in demands[:limit]) + \
        (f" and {len(demands) - limit} more" if len(demands) > limit else "")


@dataclass
class Node:
    """One Ray node as packing sees it: free resources, and the free share of each GPU."""

    name: str
    free: dict[str, float]
    gpus: list[float]  # free share of each physical GPU

    @classmethod
    def from_totals(cls, name: str, totals: Mapping[str, float]) -> Node:
        """A node holding ``totals`` (its resources), every GPU whole."""
        return cls(name, dict(totals), [1.0] * int(totals.get("GPU", 0)))


def fit_problem(bundle: Mapping[str, float], node: Node) -> str | None:
    """Why ``bundle`` does not fit on ``node`` now (None: it fits). A GPU fraction must fit on
    one device, as Ray places it."""
    for key, want in bundle.items():
        if key == "GPU" or not want:
            continue
        have = node.free.get(key, 0.0)
        if have + 1e-9 < want:
            return f"{key} {want:g} wanted, {have:g} left" if key in node.free else f"no {key!r} resource"
    want = bundle.get("GPU", 0.0)
    if want > 1 and want != int(want):
        return f"GPU {want:g}: Ray gives a fraction only below 1 (use a whole number)"
    if want >= 1:
        whole = sum(1 for g in node.gpus if g >= 1 - 1e-9)
        if whole < want:
            return f"GPU {want:g} wanted, {whole} whole GPUs left"
    elif want > 0 and not any(g + 1e-9 >= want for g in node.gpus):
        best = max(node.gpus, default=0.0)
        return f"GPU {want:g} wanted on one device, largest free share {best:g}"
    return None


def take(bundle: Mapping[str, float], node: Node) -> None:
    """Reserve ``bundle`` on ``node`` (after :func:`fit_problem` said it fits)."""
    for key, want in bundle.items():
        if key != "GPU":
            node.free[key] = node.free.get(key, 0.0) - want
    want = bundle.get("GPU", 0.0)
    if want >= 1:
        taken = 0
        for j, g in enumerate(node.gpus):
            if taken < want and g >= 1 - 1e-9:
                node.gpus[j] = 0.0
                taken += 1
    elif want > 0:  # Ray packs a fraction onto the fullest GPU it still fits on
        j = min((j for j, g in enumerate(node.gpus) if g + 1e-9 >= want), key=lambda j: node.gpus[j])
        node.gpus[j] -= want


def unplaceable(demands: list[Demand], nodes: list[dict[str, float]]) -> list[Demand]:
    """The demands left over after packing all of them onto ``nodes`` (resource totals),
    largest GPU request first, first fit."""
    free = [Node.from_totals(f"node {i}", n) for i, n in enumerate(nodes)]
    left = []
    for d in sorted(demands, key=lambda d: (-d.resources.get("GPU", 0), -d.resources.get("CPU", 0))):
        node = next((n for n in free if fit_problem(d.resources, n) is None), None)
        if node is None:
            left.append(d)
        else:
            take(d.resources, node)
    return left


def cluster_autoscales() -> bool:
    """The cluster adds nodes on demand (``MEMRL_CLUSTER_AUTOSCALES=1``): what the nodes hold
    now does not bound what it can place."""
    return os.environ.get(AUTOSCALES_ENV, "") not in ("", "0")


def check_fits(cfg: Config, nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise :class:`RuntimeFault` naming the actors the cluster's ``nodes`` (each node's
    resource totals) can never hold at once."""
    demands = run_demands(cfg)
    left = unplaceable(demands, [dict(n) for n in nodes])
    if not left:
        return
    asked: dict[str, float] = {}
    for d in demands:
        for k, v in d.resources.items():
            asked[k] = asked.get(k, 0.0) + v
    shown = [{k: v for k, v in n.items() if k in ("CPU", "GPU") or k in asked} for n in nodes]
    node_text = "; ".join(f"node {i}: {format_resources(n)}" for i, n in enumerate(shown))
    message = f"the Ray cluster cannot hold this run's actors: no room for {_listing(left)}"
    where = f"the run asks for {format_resources(asked)} in all; the cluster has {len(nodes)} node(s): {node_text}"
    hint = (f"ask for less ({left[0].keys}; ray.num_cpus when memrl starts the cluster), or add "
            f"nodes; if the cluster autoscales, set {AUTOSCALES_ENV}=1 to wait for new nodes")
    if cluster_autoscales():
        log.warning("%s (%s); waiting for the autoscaler (%s=1)", message, where, AUTOSCALES_ENV)
        return
    raise RuntimeFault(message, where=where, hint=hint)


def waiting_report(phase_name: str, elapsed_s: float, waiting: Sequence[Demand],
                   free: Mapping[str, float], stages: Mapping[str, tuple[str, float]] | None = None) -> str:
    """What start-up waits for: the phase, the actors memrl created that have not answered yet
    with the resources each asked for and what each is doing (``stages``: actor name ->
    (what it said it does, for how many seconds); an actor that said nothing yet is pending
    placement or its process is starting), and what the cluster has free (CPU, GPU, custom)."""
    # Ray's internal resources (node ids, placement-group bundles such as CPU_group_0_<id>,
    # memory) mean nothing to a user.
    internal = ("node:", "memory", "object_store", "accelerator_type:", "bundle_group_")
    free_text = format_resources({k: v for k, v in free.items() if k in ("CPU", "GPU") or
                                  not (k.startswith(internal) or "_group_" in k)})
    stages = stages or {}

    def state(d: Demand) -> str:
        if d.actor not in stages:
            return f"{d.actor} ({format_resources(d.resources)}) pending placement or starting"
        what, seconds = stages[d.actor]
        return f"{d.actor} ({format_resources(d.resources)}) {what} for {seconds:.0f} s"

    limit = 8
    listing = "; ".join(state(d) for d in waiting[:limit]) + \
        (f" and {len(waiting) - limit} more" if len(waiting) > limit else "")
    actors = f"; {len(waiting)} actor(s) not ready yet: {listing}" if waiting else ""
    return (f"memrl: still in {phase_name} after {elapsed_s:.0f} s{actors}; "
            f"free in the cluster now: {free_text}")
