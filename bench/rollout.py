"""Benchmark: tokens/s of memrl's rollout workers vs the bare engines, vLLM and transformers
side by side in one run.

Every row generates the same prompts (the embedded default's arith questions, rendered with
``memrl.prompts.record_prompt`` as the trainer renders them) with the same model, sampling
settings, group size and number of new tokens, and counts generated tokens the same way (every
produced token up to and including the first EOS: ``memrl.rollout.engine.completion_mask``).
For each engine (``--engines``, default vLLM when a working build is installed, then ``hf``):

- bare engine, in this process with 1 torch thread: ``vllm.LLM.generate`` offline (float32 on
  the CPU build, eager, as memrl's engine runs it) or ``transformers`` ``model.generate``;
- memrl: the real Ray actors of ``actors/rollout.py`` created as ``Trainer.__init__`` creates
  them (``rollout.engine`` set to that engine), fed through ``RolloutPool`` with the trainer's
  chunking and per-chunk seeds, timed on the driver from dispatch to every worker's answer
  (the batch stays in the object store, as in training). 1 worker (1 CPU, 1 thread) against
  the bare engine is the like-for-like figure (``fraction``, target >= 0.9); 2 workers is a
  second phase (``--two-workers``) that alternates with the bare engine again;
- diagnostic (hf only): memrl's ``HFEngine`` in this process, without Ray, to split memrl's
  overhead into engine work (log-prob recording, batch assembly, decoding) and Ray transport.

Engines run one after the other; within an engine the rows alternate over ``--repeats`` rounds
(default 5; bare, memrl, in-process, bare, ...: ``bench._common.alternating_rounds``) so that
load from other processes on a shared machine hits them alike; one warm-up round comes first
and is dropped. Every ratio is taken round by round (tokens/s over the bare engine's tokens/s
of the same round) and reported as its median and range (min-max). ``vllm_over_hf`` compares
the memrl 1-worker rows of the two engines round by round; the engines ran one after the
other, so its range also holds the machine's drift between them. ``--model-size 34m`` is a
random Llama with hidden size 512 and 8 layers (a size where generation dominates on CPU);
``qwen2``, ``llama3``, ``falcon3`` (the paper models' architectures at full size) and ``1.5b``
are for GPU machines.

Run from the repository root: ``python -m bench.rollout --json rollout.json``
(``--model-size 34m --prompts 32 --max-tokens 32 --no-two-workers`` for the larger model).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

import bench._common as common  # first: one thread per process, offline hubs
from memrl.cluster.requests import request_seed, training_sampling
from memrl.rollout.availability import vllm_available
from memrl.rollout.engine import SamplingSettings, checkpoint_eos_ids
from memrl.rollout.factory import resolve_engine_kind
from memrl.train.setup import rollout_worker_factory

TARGET_FRACTION = 0.9


@dataclass(frozen=True)
class Run:
    """One timed generation call: tokens produced and wall seconds; ``engine_seconds`` is the
    time the worker itself reported for its engine call (memrl rows only, slowest worker)."""

    tokens: int
    seconds: float
    engine_seconds: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return common.ratio(self.tokens, self.seconds, "tokens per second")


class BareHF:
    """``transformers`` ``model.generate`` with the sampling memrl's HF engine uses, nothing
    else: no log-prob recording, no batch assembly, no decoding."""

    def __init__(self, model_path: str, tokenizer: Any):
        self.tokenizer = tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto").eval()
        self.eos_ids = checkpoint_eos_ids(model_path, tokenizer)
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids,
                                                        pad_token_id=tokenizer.pad_token_id)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Run:
        start = time.perf_counter()
        encoded = self.tokenizer(list(prompts), padding=True, add_special_tokens=False,
                                 return_tensors="pt")
        g = settings.num_generations
        input_ids = encoded["input_ids"].repeat_interleave(g, dim=0)
        attention_mask = encoded["attention_mask"].repeat_interleave(g, dim=0)
        config = GenerationConfig(do_sample=True, temperature=settings.temperature,
                              top_p=settings.top_p, top_k=0, max_new_tokens=settings.max_tokens,
                              eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        with torch.inference_mode():
            torch.manual_seed(settings.seed)
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            generation_config=config)
        seconds = time.perf_counter() - start
        completion = sequences[:, input_ids.shape[1]:]
        tokens = common.count_generated_tokens(completion, torch.ones_like(completion),
                                               self.eos_ids)
        return Run(tokens, seconds)

    def close(self) -> None:
        del self.model


class BareVLLM:
    """``vllm.LLM.generate`` offline with the engine arguments memrl's vLLM engine uses."""

    def __init__(self, model_path: str, tokenizer: Any, cfg: Any):
        import os

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        self.tokenizer = tokenizer
        self.eos_ids = checkpoint_eos_ids(model_path, tokenizer)
        # float32 and eager on the CPU build: vLLM's fastest setting there (and the learner's
        # dtype, which memrl's engine uses); its defaults (bfloat16, compiled) on a GPU.
        self.llm = LLM(model=model_path, seed=cfg.seed, enable_prefix_caching=True,
                       dtype="float32" if on_cpu else "auto", enforce_eager=on_cpu,
                       # as memrl's engine: chunked prefill breaks seeded requests on CPU
                       **({"enable_chunked_prefill": False} if on_cpu else {}),
                       gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                       max_model_len=cfg.grpo.max_prompt_length + cfg.grpo.max_completion_length)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Run:
        from vllm import SamplingParams

        start = time.perf_counter()
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        params = [SamplingParams(n=settings.num_generations, temperature=settings.temperature,
                                 top_p=settings.top_p, max_tokens=settings.max_tokens,
                                 seed=settings.seed + i * settings.num_generations,
                                 stop_token_ids=self.eos_ids, detokenize=False)
                  for i in range(len(prompts))]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        rows = [list(c.token_ids) for out in outputs for c in out.outputs]
        return Run(common.count_generated_token_lists(rows, self.eos_ids), seconds)

    def close(self) -> None:
        del self.llm


class InProcessEngine:
    """memrl's own ``HFEngine`` called directly (no Ray): engine overhead without transport."""

    def __init__(self, model_path: str, seed: int):
        from memrl.rollout.hf_engine import HFEngine

        self.engine = HFEngine(model_path, seed=seed, num_threads=1)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings) -> Run:
        start = time.perf_counter()
        batch = self.engine.generate(list(prompts), [str(i) for i in range(len(prompts))], settings)
        return Run(int(batch.completion_mask.sum()), time.perf_counter() - start)


class MemrlPool:
    """Rollout workers in a ``RolloutPool``, called as ``Trainer._launch`` calls them."""

    def __init__(self, cfg: Any, model_path: str, workers: int):
        from memrl.actors.rollout_pool import RolloutPool

        self.cfg = cfg
        self.pool = RolloutPool(rollout_worker_factory(cfg, model_path), workers,
                                timeout_s=cfg.trainer.timeout_s)
        self.pool.wait_until_ready()

    def resize(self, workers: int) -> None:
        self.pool.resize(workers)
        self.pool.wait_until_ready()

    def generate(self, prompts: Sequence[str], template: SamplingSettings, repetition: int) -> Run:
        from memrl.cluster.requests import chunk_requests

        requests = chunk_requests(list(prompts), [str(i) for i in range(len(prompts))],
                                  num_chunks=len(self.pool))

        def submit(actor: Any, req: Any):
            # The trainer's per-request seed, the repetition standing in for the step.
            settings = dataclasses.replace(
                template, seed=request_seed(self.cfg.seed, repetition, req.index))
            return actor.generate.remote(req.prompts, req.record_ids, settings, None)

        start = time.perf_counter()
        results = self.pool.generate(requests, submit)
        seconds = time.perf_counter() - start
        return Run(sum(int(r.info["tokens"]) for r in results), seconds,
                   max(float(r.info["generate_seconds"]) for r in results))

    def close(self) -> None:
        self.pool.resize(0, allow_empty=True)


def rate_summary(runs: Sequence[Run]) -> dict[str, Any]:
    """Tokens/s statistics of ``runs`` (each run's tokens over its own seconds) and the rates
    themselves, ``per_round``."""
    rates = [r.tokens_per_s for r in runs]
    return {**common.summarise(rates), "per_round": rates}


def rollout_figures(bare: Sequence[Run], memrl: dict[str, Sequence[Run]],
                    in_process: Sequence[Run] = (),
                    bare_for: dict[str, Sequence[Run]] | None = None) -> dict[str, Any]:
    """The benchmark's figures from timed rounds (warm-ups already dropped).

    ``memrl`` maps a row name (``"1_worker"``, ``"2_workers"``) to its runs, one per round;
    ``bare`` (and ``in_process``) ran in the same rounds as ``"1_worker"``; a row measured in
    another phase names its own rounds of the bare engine in ``bare_for`` (their tokens/s:
    ``bare_<row>_phase_tokens_per_s``). ``fraction_<row>`` is the row's tokens/s over the bare
    engine's of the same round: median, range (min, max) and ``per_round``
    (:func:`bench._common.ratio_rounds`); ``fraction`` is the 1-worker one.
    ``overhead_s`` splits memrl's 1-worker seconds per call (medians): ``ray`` = driver wall
    minus the worker's engine time; ``engine`` = the worker's engine time minus the bare call.
    """
    if "1_worker" not in memrl:
        raise ValueError("rollout_figures needs the '1_worker' memrl row (the like-for-like one)")
    figures: dict[str, Any] = {"bare_tokens_per_s": rate_summary(bare),
                               "bare_tokens_per_call": common.summarise([r.tokens for r in bare])}
    for name, runs in (bare_for or {}).items():
        figures[f"bare_{name}_phase_tokens_per_s"] = rate_summary(runs)
    bare_for = {name: bare for name in memrl} | (bare_for or {})
    for name, runs in memrl.items():
        figures[f"memrl_{name}_tokens_per_s"] = rate_summary(runs)
        figures[f"fraction_{name}"] = fraction_rounds(runs, bare_for[name], name)
    figures["fraction"] = figures["fraction_1_worker"]
    one = memrl["1_worker"]
    bare_s = common.summarise([r.seconds for r in bare])["median"]
    figures["overhead_s"] = {
        "ray": common.summarise([r.seconds - r.engine_seconds for r in one])["median"],
        "engine": common.summarise([r.engine_seconds for r in one])["median"] - bare_s,
    }
    if in_process:
        figures["in_process_engine_tokens_per_s"] = rate_summary(in_process)
        figures["fraction_in_process_engine"] = fraction_rounds(in_process, bare, "in-process engine")
    figures["same_tokens"] = [r.tokens for r in bare] == [r.tokens for r in one]
    figures["target_fraction"] = TARGET_FRACTION
    return figures


def fraction_rounds(runs: Sequence[Run], bare: Sequence[Run], what: str) -> dict[str, Any]:
    """Tokens/s of ``runs`` over those of ``bare``, round by round, summarised."""
    return common.ratio_rounds([r.tokens_per_s for r in runs], [r.tokens_per_s for r in bare], what)


def side_by_side(by_engine: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Figures of every engine plus ``vllm_over_hf``: memrl's 1-worker vLLM tokens/s over its
    1-worker hf tokens/s, round by round (same round index; the engines ran one after the
    other), summarised, when both engines ran."""
    figures: dict[str, Any] = {"engines": by_engine}
    if {"vllm", "hf"} <= set(by_engine):
        figures["vllm_over_hf"] = common.ratio_rounds(
            by_engine["vllm"]["memrl_1_worker_tokens_per_s"]["per_round"],
            by_engine["hf"]["memrl_1_worker_tokens_per_s"]["per_round"], "vllm over hf")
    return figures


def table_rows(by_engine: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """``[row, median tokens/s, min, max, vs bare of the same engine: median, its range]`` for
    every engine's rows (the ratio's median and range over rounds)."""
    rows: list[list[Any]] = []

    def row(name: str, rate: dict[str, Any], fraction: dict[str, Any] | None) -> list[Any]:
        if fraction is None:
            return [name, rate["median"], rate["min"], rate["max"], 1.0, ""]
        return [name, rate["median"], rate["min"], rate["max"], fraction["median"],
                f"{fraction['min']:.3f}-{fraction['max']:.3f}"]

    for kind, figures in by_engine.items():
        rows.append(row(f"bare {BARE_NAMES[kind]} (1 thread)", figures["bare_tokens_per_s"], None))
        if "in_process_engine_tokens_per_s" in figures:
            rows.append(row("memrl HFEngine, no Ray", figures["in_process_engine_tokens_per_s"],
                            figures["fraction_in_process_engine"]))
        for name in ("1_worker", "2_workers"):
            if f"memrl_{name}_tokens_per_s" in figures:
                rows.append(row(f"memrl {kind} rollout, {name.replace('_', ' ')}",
                                figures[f"memrl_{name}_tokens_per_s"], figures[f"fraction_{name}"]))
    return rows


BARE_NAMES = {"vllm": "vllm.LLM.generate", "hf": "transformers generate"}


def measure_engine(kind: str, overrides: Sequence[str], model_path: str, tokenizer: Any,
                   prompts: list[str], template: SamplingSettings, repeats: int,
                   two_workers: bool) -> dict[str, Any]:
    """The rows of one engine (``"vllm"`` or ``"hf"``), alternating over ``repeats`` rounds
    after a dropped warm-up round; the 2-worker phase alternates with the bare engine again."""
    cfg = common.bench_config([*overrides, f"rollout.engine={kind}"])
    bare = BareVLLM(model_path, tokenizer, cfg) if kind == "vllm" else BareHF(model_path, tokenizer)
    in_process = InProcessEngine(model_path, cfg.seed) if kind == "hf" else None
    pool = MemrlPool(cfg, model_path, 1)

    def seeded(r: int) -> SamplingSettings:  # the seed memrl's 1-chunk request gets in round r
        return dataclasses.replace(template, seed=request_seed(cfg.seed, r, 0))

    rows: dict[str, Any] = {"bare": lambda r: bare.generate(prompts, seeded(r)),
                            "1_worker": lambda r: pool.generate(prompts, template, r)}
    if in_process is not None:
        rows["in_process"] = lambda r: in_process.generate(prompts, seeded(r))
    try:
        one = common.alternating_rounds(rows, repeats, warmup=1)
        two: dict[str, list[Run]] = {}
        if two_workers:
            pool.resize(2)
            two = common.alternating_rounds({"bare": rows["bare"], "2_workers": rows["1_worker"]},
                                            repeats, warmup=1)
    finally:
        pool.close()
        bare.close()
    memrl_rows = {"1_worker": one["1_worker"], **({"2_workers": two["2_workers"]} if two else {})}
    return rollout_figures(one["bare"], memrl_rows, one.get("in_process", ()),
                           {"2_workers": two["bare"]} if two else None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="default: one step's prompts")
    parser.add_argument("--generations", type=int, default=None, help="default: grpo.num_generations")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="new tokens per completion; default grpo.max_completion_length")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds, one call per row each (+1 warm-up round)")
    parser.add_argument("--two-workers", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure 2 rollout workers")
    parser.add_argument("--engines", default=None,
                        help="comma-separated, in order; default vllm,hf (hf without vLLM)")
    common.add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats}: must be >= 1")
    engines = (args.engines.split(",") if args.engines
               else ["vllm", "hf"] if vllm_available() else ["hf"])
    for kind in engines:
        if kind not in BARE_NAMES:
            raise ValueError(f"--engines {args.engines!r}: {kind!r} is not one of vllm, hf")
        resolve_engine_kind(kind)  # fails here, with the fix, when the engine cannot start

    import ray

    from memrl.actors.cluster import init_ray

    common.one_thread()
    gpu = torch.cuda.is_available()
    overrides = list(args.overrides)
    if gpu and not any(o.startswith("rollout.num_gpus_per_worker=") for o in overrides):
        # Workers and the bare engine share the one GPU.
        overrides += ["rollout.num_gpus_per_worker=0.25", "rollout.gpu_memory_utilization=0.25"]
    cfg = common.bench_config(overrides)
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    task, model_path, tokenizer = common.prepare(cfg, args.model_size, dtype)
    # The workers compute in the bare engines' dtype (model.dtype auto could differ from it).
    run_overrides = overrides + [f"model.dtype={dtype}", *([f"model.name_or_path={model_path}"]
                                                          if args.model_size != "tiny" else [])]
    g = cfg.grpo
    prompt_count = args.prompts or g.prompts_per_step
    prompts = common.render_prompts(task, tokenizer, common.stream_records(task, cfg, prompt_count), cfg)
    template = dataclasses.replace(training_sampling(g),
                                   max_tokens=args.max_tokens or g.max_completion_length,
                                   num_generations=args.generations or g.num_generations)
    init_ray(cfg)
    try:
        by_engine = {kind: measure_engine(kind, run_overrides, model_path, tokenizer, prompts,
                                          template, args.repeats, args.two_workers)
                     for kind in engines}
    finally:
        ray.shutdown()

    figures = side_by_side(by_engine)
    figures["config"] = {"prompts": prompt_count, "generations": template.num_generations,
                         "max_tokens": template.max_tokens, "temperature": template.temperature,
                         "top_p": template.top_p, "repeats": args.repeats, "engines": engines,
                         "model": args.model_size, "model_path": model_path,
                         "dtype": dtype,
                         "overrides": overrides}
    figures["machine"] = common.machine()
    common.write_json(args.json, figures)

    print(f"{prompt_count} prompts x {template.num_generations} completions x "
          f"{template.max_tokens} new tokens, model {args.model_size}; {args.repeats} alternating "
          "rounds, ratios round by round: median (min-max); tokens counted up to and including EOS")
    for kind, f in by_engine.items():
        print(f"{kind}: memrl 1-worker overhead per call: Ray transport "
              f"{f['overhead_s']['ray']:.3f} s, engine extras {f['overhead_s']['engine']:.3f} s; "
              f"same tokens as bare: {f['same_tokens']}; fraction (1 worker / bare) = "
              f"{common.median_range(f['fraction'], 3)} (target >= {TARGET_FRACTION})")
    print(common.format_table(["row", "median tokens/s", "min", "max", "vs bare", "range"],
                              table_rows(by_engine)))
    if "vllm_over_hf" in figures:
        print(f"memrl vLLM worker / memrl hf worker = {common.median_range(figures['vllm_over_hf'])} "
              "(engines measured one after the other)")
    return figures


if __name__ == "__main__":
    main()
