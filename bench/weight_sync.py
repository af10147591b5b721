"""Benchmark: time from "optimizer step done" to every rollout worker holding the new weights.

memrl's real path, with the trainer's actors (``LearnerGroup`` and rollout workers created as
``Trainer.__init__`` creates them):

1. ``LearnerGroup.publish_weights(version)``: rank 0 gathers its weights and packs them into
   one buffer per dtype (``PolicyTrainer.publish``, buffers reused version after version:
   ``pack``); Ray serialises the returned buffers into the learner node's object store as the
   method returns (``put`` = the driver's wall time of the call minus ``pack``);
2. every rollout worker receives ``(version, ref)`` with its next request and, the version
   being newer, fetches the object (``transfer``: a zero-copy view on the learner's node, a
   pull between nodes) and loads it into its engine (``reload``: vLLM's in-place copy into the
   live model; ``verify``: the probe forward and the fingerprint that prove the load) before
   generating; a 1-token request stands in for the next step's generation.

Per version ``seconds = publish + max over workers (transfer + load)``, the time after which all
workers hold the version. ``wall_minus_noop`` cross-checks it from the driver's clock: the wall
time of publish + the 1-token request, minus the same request without new weights. The weights
do not change between versions (no optimizer step is taken): packing, transport and loading
cost the same whatever the values. The learner runs with ``grpo.beta=0`` (no reference model:
less memory, the same publish path).

After the timed versions one worker leaves and a new one joins: its engine start, then the time
until it holds the current version (``late_joiner``). Peak resident memory of the learner and of
each worker (``VmHWM``, the learner's node is this machine) is reported too.

``--nodes N`` then repeats the publication on ``ray.cluster_utils.Cluster``: the learner on the
head node and one puller on each of N simulated nodes (separate raylets and object stores on
this machine), 1, 2, 4 ... N of them pulling each version at once (``nodes`` in the JSON): does
the time until all hold it grow with their number? Pullers only fetch (no engine: N engines of
the full model would not fit in this machine's memory).

``--model-size tiny`` (default) is the embedded default's model; ``qwen2``, ``llama3`` and
``falcon3`` are the paper models' architectures at full size with random weights
(``memrl.model.replicas``; Qwen2.5-0.5B is 494M parameters, 1.98 GB in float32); ``34m`` and
``1.5b`` are Llama-shaped random models. On a GPU the learner takes half the GPU and the
workers share the other half (vLLM). The workers run the configured engine (``rollout.engine:
auto``: vLLM whenever a working build is installed, its CPU build here; ``--set
rollout.engine=hf`` measures the transformers workers).

Run from the repository root: ``python -m bench.weight_sync --json weight_sync.json``
(docs/performance.md has the 494M command).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import bench._common as common  # first: one thread per process, offline hubs
from memrl.rollout.engine import SamplingSettings
from memrl.train.setup import rollout_worker_factory

TARGET_SECONDS = 0.5  # issue 6: <= 0.5 s for a 0.5B model on one GPU node
CPU_TARGET_SECONDS = 1.5  # issue 27: <= 1.5 s for Qwen2.5-0.5B's 494M parameters on this CPU


@dataclass(frozen=True)
class SyncTiming:
    """One version's publication and arrival (seconds).

    ``publish``: driver wall time of ``publish_weights``; ``pack``: the learner's own time for
    it; ``fetch``/``load``: per worker, getting the object and loading it (``reload`` and
    ``verify``: the engine's phases of ``load``, when it reports them); ``request_wall``/
    ``noop_wall``: driver wall time of the 1-token request with the new version and again with
    nothing to load."""

    publish: float
    pack: float
    fetch: Sequence[float]
    load: Sequence[float]
    request_wall: float
    noop_wall: float
    reload: Sequence[float] = field(default_factory=tuple)
    verify: Sequence[float] = field(default_factory=tuple)

    @property
    def put(self) -> float:
        """Publish time beyond packing: serialising into the object store, call overhead."""
        return self.publish - self.pack

    @property
    def seconds(self) -> float:
        """Until the slowest worker holds the version: publish + max(fetch + load)."""
        return self.publish + max(f + load for f, load in zip(self.fetch, self.load))

    @property
    def wall_minus_noop(self) -> float:
        return self.publish + self.request_wall - self.noop_wall


def sync_figures(timings: Sequence[SyncTiming], nbytes: int,
                 target_s: float = TARGET_SECONDS) -> dict[str, Any]:
    """Summaries of every component and ``speedup = target_s / median(seconds)``."""
    seconds = common.summarise([t.seconds for t in timings])
    figures = {
        "speedup": common.ratio(target_s, seconds["median"], "weight sync speedup"),
        "target_s": target_s,
        "seconds": seconds,
        "seconds_raw": [t.seconds for t in timings],
        "wall_minus_noop_s": common.summarise([t.wall_minus_noop for t in timings]),
        "publish_s": common.summarise([t.publish for t in timings]),
        "pack_s": common.summarise([t.pack for t in timings]),
        "put_s": common.summarise([t.put for t in timings]),
        "fetch_s": common.summarise([max(t.fetch) for t in timings]),
        "load_s": common.summarise([max(t.load) for t in timings]),
        "nbytes": int(nbytes),
    }
    for phase in ("reload", "verify"):
        if all(getattr(t, phase) for t in timings):
            figures[f"{phase}_s"] = common.summarise([max(getattr(t, phase)) for t in timings])
    return figures


def gpu_overrides(overrides: Sequence[str], workers: int) -> list[str]:
    """With a GPU: the learner takes half of it, the workers share the other half (unless the
    user placed them with ``--set``)."""
    if not torch.cuda.is_available() or any(o.startswith(("learner.num_gpus=",
                                                          "rollout.num_gpus_per_worker="))
                                            for o in overrides):
        return list(overrides)
    share = 0.5 / workers
    return [*overrides, "learner.num_gpus=0.5", f"rollout.num_gpus_per_worker={share}",
            f"rollout.gpu_memory_utilization={min(0.4, share * 0.8):.3f}"]


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident memory (``VmHWM``) of a process on this machine; None when it cannot be
    read (another node, or no ``/proc``). Shared object-store pages count once touched."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def arrival(workers: list[Any], prompt: str, handle: tuple[int, Any],
            settings: SamplingSettings) -> tuple[float, list[dict[str, Any]], list[dict[str, Any]]]:
    """Send every worker a request carrying ``handle``: the driver's wall time, the workers'
    request summaries and their stats (last fetch and load) afterwards."""
    import ray

    start = time.perf_counter()
    infos = ray.get([w.generate.remote([prompt], ["0"], settings, handle)[1] for w in workers])
    wall = time.perf_counter() - start
    stale = [i["worker_id"] for i in infos if i["weight_version"] != handle[0]]
    if stale:
        raise RuntimeError(f"workers {stale} did not load weight version {handle[0]}")
    return wall, infos, ray.get([w.stats.remote() for w in workers])


def measure(learners: Any, workers: list[Any], prompt: str,
            version: int) -> tuple[SyncTiming, int, tuple[int, Any]]:
    """Publish ``version`` and deliver it to every worker; returns the timing, the bytes and
    the ``(version, ref)`` handle."""
    settings = SamplingSettings(temperature=1.0, max_tokens=1, num_generations=1, seed=version)
    start = time.perf_counter()
    ref, summary = learners.publish_weights(version)
    publish = time.perf_counter() - start
    handle = (version, ref)
    request_wall, _, stats = arrival(workers, prompt, handle, settings)
    noop_wall, _, _ = arrival(workers, prompt, handle, settings)  # nothing to fetch or load
    fetch = [float(s["last_fetch_s"]) for s in stats]
    load = [float(s["last_sync_s"]) - f for s, f in zip(stats, fetch)]
    phases = {phase: [float(s[f"last_{phase}_s"]) for s in stats if f"last_{phase}_s" in s]
              for phase in ("reload", "verify")}
    timing = SyncTiming(publish=publish, pack=float(summary["seconds"]), fetch=fetch, load=load,
                        request_wall=request_wall, noop_wall=noop_wall, **phases)
    return timing, int(summary["nbytes"]), handle


def join_late(pool: Any, prompt: str, handle: tuple[int, Any]) -> dict[str, Any]:
    """One worker leaves and a new one joins: its start-up, then the time until it holds the
    version of ``handle`` (fetch + load, and the load's phases)."""
    import ray

    pool.resize(len(pool.workers) - 1)
    started = time.perf_counter()
    pool.resize(len(pool.workers) + 1)
    pool.wait_until_ready()
    start_s = time.perf_counter() - started
    newest = list(pool.workers.values())[-1]
    settings = SamplingSettings(temperature=1.0, max_tokens=1, num_generations=1, seed=0)
    wall, _, (stats,) = arrival([newest], prompt, handle, settings)
    fetch = float(stats["last_fetch_s"])
    late = {"start_s": start_s, "request_wall_s": wall, "fetch_s": fetch,
            "load_s": float(stats["last_sync_s"]) - fetch, "seconds": float(stats["last_sync_s"])}
    late.update({f"{phase}_s": float(stats[f"last_{phase}_s"]) for phase in ("reload", "verify")
                 if f"last_{phase}_s" in stats})
    late["peak_rss_bytes"] = peak_rss_bytes(ray.get(newest.ping.remote())["pid"])
    return late


def node_rounds(nodes: int) -> list[int]:
    """How many nodes pull at once in each round: 1, 2, 4, ... up to ``nodes`` (included)."""
    rounds, n = [], 1
    while n < nodes:
        rounds.append(n)
        n *= 2
    return [*rounds, nodes]


def measure_nodes(cfg_overrides: list[str], model_path: str, nodes: int, nbytes: int,
                  repeats: int) -> dict[str, Any]:
    """The learner on the head node of a simulated cluster publishes; pullers on 1, 2, 4 ...
    ``nodes`` other nodes fetch each version at once. Per round: the seconds until every puller
    holds it (publish + the slowest pull) and each pull's own seconds."""
    import ray
    from ray.cluster_utils import Cluster

    from memrl.actors.cluster import init_ray
    from memrl.actors.learner import LearnerGroup
    from memrl.train.setup import learner_settings

    @ray.remote(num_cpus=0)
    class Puller:
        """Fetches a published version into its node's object store (no engine)."""

        def pull(self, handle: tuple[int, Any]) -> dict[str, Any]:
            start = time.perf_counter()
            packed = ray.get(handle[1])
            seconds = time.perf_counter() - start
            if packed.version != handle[0]:
                raise RuntimeError(f"pulled version {packed.version}, expected {handle[0]}")
            return {"seconds": seconds, "node_id": ray.get_runtime_context().get_node_id()}

    store = int(nbytes * 1.5) + 2**28  # one version with room to spare, per node
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "object_store_memory": store, "include_dashboard": False})
    for i in range(nodes):
        cluster.add_node(num_cpus=0, object_store_memory=store, resources={f"puller_node_{i}": 1.0})
    cluster.wait_for_nodes()
    cfg = common.bench_config([*cfg_overrides, f"ray.address={cluster.address}"])
    init_ray(cfg)
    learners = None
    try:
        learners = LearnerGroup(learner_settings(cfg, model_path), 1, num_cpus_per_learner=1,
                                timeout_s=cfg.trainer.timeout_s)
        pullers = [Puller.options(resources={f"puller_node_{i}": 1.0}).remote() for i in range(nodes)]
        # Warm-up, not timed: the pullers start and the learner allocates its packing buffers.
        ref, _ = learners.publish_weights(0)
        ray.get([p.pull.remote((0, ref)) for p in pullers])
        del ref
        rounds: list[dict[str, Any]] = []
        version = 0
        for count in node_rounds(nodes):
            for _ in range(repeats):
                version += 1
                start = time.perf_counter()
                ref, summary = learners.publish_weights(version)
                publish = time.perf_counter() - start
                pulls = ray.get([p.pull.remote((version, ref)) for p in pullers[:count]])
                wall = time.perf_counter() - start
                if len({p["node_id"] for p in pulls}) != count:
                    raise RuntimeError(f"{count} pullers ran on fewer nodes: {pulls}")
                rounds.append({"nodes": count, "version": version, "publish_s": publish,
                               "pack_s": float(summary["seconds"]), "seconds": wall,
                               "pull_s": [p["seconds"] for p in pulls]})
                del ref  # frees every node's copy before the next version
        return {"nodes": nodes, "repeats": repeats, "rounds": rounds,
                "by_nodes": {str(n): common.summarise([r["seconds"] for r in rounds if r["nodes"] == n])
                             for n in node_rounds(nodes)}}
    finally:
        if learners is not None:
            learners.shutdown()
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_arguments(parser)
    parser.add_argument("--workers", type=int, default=None, help="default: rollout.num_workers")
    parser.add_argument("--repeats", type=int, default=10, help="timed versions (+1 warm-up)")
    parser.add_argument("--no-late-joiner", dest="late_joiner", action="store_false",
                        help="skip the worker that joins after the timed versions")
    parser.add_argument("--nodes", type=int, default=0,
                        help="then pull from N simulated nodes at once (ray.cluster_utils.Cluster)")
    parser.add_argument("--node-repeats", type=int, default=2, help="versions per node count")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: must be >= 1")

    import ray

    from memrl.actors.cluster import init_ray
    from memrl.actors.learner import LearnerGroup
    from memrl.actors.rollout_pool import RolloutPool
    from memrl.train.setup import learner_settings

    common.one_thread()
    gpu = torch.cuda.is_available()
    overrides = ["grpo.beta=0", *args.overrides]
    cfg = common.bench_config(overrides)
    workers = args.workers or cfg.rollout.num_workers
    overrides = gpu_overrides(overrides, workers)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    task, model_path, tokenizer = common.prepare(cfg, args.model_size, dtype)
    if args.model_size != "tiny":
        overrides += [f"model.name_or_path={model_path}", f"model.dtype={dtype}"]
    cfg = common.bench_config(overrides)
    prompt = common.render_prompts(task, tokenizer, common.stream_records(task, cfg, 1), cfg)[0]

    init_ray(cfg)
    started = time.perf_counter()
    learners = LearnerGroup(learner_settings(cfg, model_path), cfg.learner.num_learners,
                            num_cpus_per_learner=cfg.learner.num_cpus,
                            num_gpus_per_learner=cfg.learner.num_gpus,
                            timeout_s=cfg.trainer.timeout_s)
    pool = RolloutPool(rollout_worker_factory(cfg, model_path), workers,
                       timeout_s=cfg.trainer.timeout_s)
    late: dict[str, Any] | None = None
    try:
        pool.wait_until_ready()
        print(f"learner and {workers} rollout workers up in {time.perf_counter() - started:.1f} s")
        timings, nbytes, handle = [], 0, None
        for version in range(1, args.repeats + 2):
            handle = None  # one version in the object store at a time: 2 GB each at 494M fp32
            timing, nbytes, handle = measure(learners, list(pool.workers.values()), prompt, version)
            timings.append(timing)
        assert handle is not None
        pings = ray.get([w.ping.remote() for w in pool.workers.values()])
        engine = pings[0]["engine"]
        memory = {"learner_peak_rss_bytes": peak_rss_bytes(learners.ping()[0]["pid"]),
                  "worker_peak_rss_bytes": [peak_rss_bytes(p["pid"]) for p in pings],
                  "object_store_bytes_per_version": nbytes}
        if args.late_joiner:
            late = join_late(pool, prompt, handle)
    finally:
        pool.resize(0, allow_empty=True)
        learners.shutdown()
        ray.shutdown()

    target = CPU_TARGET_SECONDS if not gpu else TARGET_SECONDS
    figures = sync_figures(timings[1:], nbytes, target)  # version 1 warms the path up
    dtype = cfg.model.dtype  # "auto" for the tiny model: its checkpoint's float32
    figures["config"] = {"model": args.model_size, "model_path": model_path, "dtype": dtype,
                         "workers": workers, "repeats": args.repeats, "engine": engine,
                         "overrides": overrides}
    figures["memory"] = memory
    figures["late_joiner"] = late
    if args.nodes:
        figures["nodes"] = measure_nodes(overrides, model_path, args.nodes, nbytes, args.node_repeats)
    figures["machine"] = common.machine()
    common.write_json(args.json, figures)
    print(report(figures))
    return figures


def report(figures: dict[str, Any]) -> str:
    """The printed tables: the phases, memory, the late joiner and the node rounds."""
    config = figures["config"]
    lines = [f"model {config['model']} ({figures['nbytes'] / 2**20:.1f} MiB packed, {config['dtype']}), "
             f"{config['workers']} {config['engine']} workers, {config['repeats']} versions "
             "(median, p90 in seconds)"]
    names = [("publish (driver wall)", "publish_s"), ("  pack (learner)", "pack_s"),
             ("  put (object store)", "put_s"), ("transfer (slowest worker)", "fetch_s"),
             ("load (slowest worker)", "load_s"), ("  reload", "reload_s"), ("  verify", "verify_s"),
             ("all workers hold it", "seconds"), ("  wall - no-op request", "wall_minus_noop_s")]
    lines.append(common.format_table(["phase", "median s", "p90 s"],
                                     [[label, figures[key]["median"], figures[key]["p90"]]
                                      for label, key in names if key in figures]))
    lines.append(f"target {figures['target_s']} s / median = {figures['speedup']:.2f}")
    memory = figures["memory"]
    gib = [f"{b / 2**30:.2f}" if b else "?" for b in
           [memory["learner_peak_rss_bytes"], *memory["worker_peak_rss_bytes"]]]
    lines.append(f"peak RSS GiB: learner {gib[0]}, workers {', '.join(gib[1:])}")
    late = figures.get("late_joiner")
    if late:
        lines.append(f"late joiner: started in {late['start_s']:.1f} s, then held the version after "
                     f"{late['seconds']:.3f} s (transfer {late['fetch_s']:.3f}, load {late['load_s']:.3f})")
    nodes = figures.get("nodes")
    if nodes:
        lines.append(common.format_table(
            ["nodes pulling at once", "median s", "max s"],
            [[n, summary["median"], summary["max"]] for n, summary in nodes["by_nodes"].items()]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
