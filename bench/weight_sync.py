"""Benchmark: time from "optimizer step done" to every rollout worker holding the new weights.

memrl's real path, with the trainer's actors (``LearnerGroup`` and rollout workers created as
``Trainer.__init__`` creates them):

1. ``LearnerGroup.publish_weights(version)``: rank 0 gathers its state dict, packs it into one
   buffer per dtype (``memrl.weights.pack_state_dict``) and returns it as an ``ObjectRef``;
   the driver waits for the small summary (``publish``);
2. every rollout worker receives ``(version, ref)`` with its next request and, the version
   being newer, fetches the object (``fetch``) and loads it into its engine (``load``) before
   generating; a 1-token request stands in for the next step's generation.

Per repetition ``seconds = publish + max over workers (fetch + load)``, the time after which
all workers hold the version. ``wall_minus_noop`` cross-checks it from the driver's clock: the
wall time of publish + the 1-token request, minus the same request without new weights.
The weights do not change between versions (no optimizer step is taken): packing, transport
and loading cost the same whatever the values. The learner runs with ``grpo.beta=0`` (no
reference model: less memory, the same publish path).

``--model-size tiny`` (default) is the embedded default's model on CPU; ``0.5b``/``1.5b`` build
a randomly initialised Llama-shaped model with Qwen2.5-0.5B/1.5B dimensions (no download;
bfloat16 on GPU), meant for GPU machines (on CPU they run, slowly; 1.5B needs ~30 GB RAM).
On a GPU the learner takes half the GPU and the workers share the other half (vLLM). The
workers run the configured engine (``rollout.engine: auto``: vLLM whenever a working build is
installed, its CPU build here, where ``load`` includes vLLM's in-place reload and the probe that
verifies it; ``--set rollout.engine=hf`` measures the transformers workers).

Run from the repository root: ``python -m bench.weight_sync --json weight_sync.json``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import bench._common as common  # first: one thread per process, offline hubs
from memrl.rollout.engine import SamplingSettings
from memrl.train.setup import rollout_worker_factory

TARGET_SECONDS = 0.5  # issue 6: <= 0.5 s for a 0.5B model on one node


@dataclass(frozen=True)
class SyncTiming:
    """One version's publication and arrival (seconds).

    ``publish``: driver wall time of ``publish_weights``; ``pack``: the learner's own time for
    it (state dict + packing); ``fetch``/``load``: per worker, getting the object and loading
    it; ``request_wall``/``noop_wall``: driver wall time of the 1-token request with the new
    version and again with nothing to load."""

    publish: float
    pack: float
    fetch: Sequence[float]
    load: Sequence[float]
    request_wall: float
    noop_wall: float

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
    return {
        "speedup": common.ratio(target_s, seconds["median"], "weight sync speedup"),
        "target_s": target_s,
        "seconds": seconds,
        "seconds_raw": [t.seconds for t in timings],
        "wall_minus_noop_s": common.summarise([t.wall_minus_noop for t in timings]),
        "publish_s": common.summarise([t.publish for t in timings]),
        "pack_s": common.summarise([t.pack for t in timings]),
        "fetch_s": common.summarise([max(t.fetch) for t in timings]),
        "load_s": common.summarise([max(t.load) for t in timings]),
        "nbytes": int(nbytes),
    }


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


def measure(learners: Any, workers: list[Any], prompt: str, version: int) -> tuple[SyncTiming, int]:
    """Publish ``version`` and deliver it to every worker; returns the timing and the bytes."""
    import ray

    settings = SamplingSettings(temperature=1.0, max_tokens=1, num_generations=1, seed=version)

    def request(handle: Any) -> tuple[float, list[dict[str, Any]]]:
        start = time.perf_counter()
        infos = ray.get([w.generate.remote([prompt], ["0"], settings, handle)[1] for w in workers])
        return time.perf_counter() - start, infos

    start = time.perf_counter()
    ref, summary = learners.publish_weights(version)
    publish = time.perf_counter() - start
    request_wall, infos = request((version, ref))
    noop_wall, _ = request((version, ref))  # same version: nothing to fetch or load
    stale = [i["worker_id"] for i in infos if i["weight_version"] != version]
    if stale:
        raise RuntimeError(f"workers {stale} did not load weight version {version}")
    stats = ray.get([w.stats.remote() for w in workers])
    fetch = [float(s["last_fetch_s"]) for s in stats]
    load = [float(s["last_sync_s"]) - f for s, f in zip(stats, fetch)]
    timing = SyncTiming(publish=publish, pack=float(summary["seconds"]), fetch=fetch, load=load,
                        request_wall=request_wall, noop_wall=noop_wall)
    return timing, int(summary["nbytes"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_arguments(parser)
    parser.add_argument("--workers", type=int, default=None, help="default: rollout.num_workers")
    parser.add_argument("--repeats", type=int, default=10, help="timed versions (+1 warm-up)")
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
    try:
        pool.wait_until_ready()
        print(f"learner and {workers} rollout workers up in {time.perf_counter() - started:.1f} s")
        timings, nbytes = [], 0
        for version in range(1, args.repeats + 2):
            timing, nbytes = measure(learners, list(pool.workers.values()), prompt, version)
            timings.append(timing)
        engine = ray.get(next(iter(pool.workers.values())).ping.remote())["engine"]
    finally:
        pool.resize(0, allow_empty=True)
        learners.shutdown()
        ray.shutdown()

    figures = sync_figures(timings[1:], nbytes)  # version 1 warms the path up
    dtype = cfg.model.dtype  # "auto" for the tiny model: its checkpoint's float32
    figures["config"] = {"model": args.model_size, "model_path": model_path, "dtype": dtype,
                         "workers": workers, "repeats": args.repeats, "engine": engine,
                         "overrides": overrides}
    figures["machine"] = common.machine()
    common.write_json(args.json, figures)

    print(f"model {args.model_size} ({nbytes / 2**20:.1f} MiB packed, {dtype}), {workers} "
          f"{engine} workers, {args.repeats} versions (median, p90 in seconds)")
    names = [("publish (driver wall)", "publish_s"), ("  learner pack", "pack_s"),
             ("fetch (slowest worker)", "fetch_s"), ("load (slowest worker)", "load_s"),
             ("all workers hold it", "seconds"), ("  wall - no-op request", "wall_minus_noop_s")]
    print(common.format_table(["phase", "median s", "p90 s"],
                              [[label, figures[key]["median"], figures[key]["p90"]]
                               for label, key in names]))
    print(f"speedup vs {TARGET_SECONDS} s target = {figures['speedup']:.2f}")
    return figures


if __name__ == "__main__":
    main()
