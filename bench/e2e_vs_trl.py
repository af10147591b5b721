"""Benchmark: seconds per GRPO step, memrl (local Ray; hf and vLLM engines) vs TRL's GRPOTrainer.

Both train the embedded default's tiny model on arith with the same group size, batch,
completion length, sampling, loss settings (KL coefficient beta, clip epsilons, loss
aggregation, reward scaling), optimizer settings and step count, in one run:

- memrl: ``memrl.train.loop.run_training`` with the default config and overrides (hf engine
  unless the row says ``@vllm``, no evaluation, no checkpoint until the end, no TensorBoard).
  The like-for-like row is method ``r1`` (rule rewards only); ``memoryr+`` (adds the
  episodic-memory service) is an extra row, and ``r1@vllm`` (vLLM rollout workers; a default
  row when a working vLLM is installed) another. A row may name a rollout mode, e.g.
  ``r1:async`` (generation of step t+1 overlaps training of step t).
- TRL: ``GRPOTrainer`` in this process with 1 torch thread, with transformers generation and,
  when vLLM works here, again with TRL's own vLLM generation (``use_vllm=True``,
  ``vllm_mode="colocate"``); the faster of the two is the baseline of ``speedup`` (a TRL mode
  that fails to run is reported with its error). Both see the same prompts in the same order
  (the records ``memrl train``'s prompt stream hands out, rendered by the same prompt builder,
  not shuffled) and the same reward: memrl's R1 rule rewards (``RewardComposer`` over the
  task's reward plan, correctness checked by ``memrl.verify``).

A step's time is the wall-clock time between the end of consecutive optimizer steps (memrl:
when the step's metrics are logged; TRL: ``on_step_end``), so everything between steps counts.
The first ``--warmup-steps`` steps are dropped on both sides. memrl's per-phase times come from
its ``metrics.jsonl`` (``time/*``; ``reference`` runs concurrently with ``score``, and
``train`` includes waiting for the rest of it); TRL's from timing its rollout method
(generation + rewards + reference log-probs), its generation call and the reward function.
Overrides that change ``task`` or ``model.tiny`` build (once) another tiny model.

Run from the repository root: ``python -m bench.e2e_vs_trl --json e2e_vs_trl.json``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import bench._common as common  # first: one thread per process, offline hubs
from memrl.config import METHODS, Config
from memrl.rewards.batch import RewardBatch
from memrl.rewards.registry import RewardComposer
from memrl.rewards.total import total_reward
from memrl.types import Record

TARGET_SPEEDUP = 1.5  # issue 6: memrl >= 1.5x faster than TRL on this machine
PHASES = ("generate", "score", "memory", "reference", "train", "sync", "step")
# memrl grpo.loss_aggregation / grpo.scale_rewards -> TRL's names for the same formulas
TRL_LOSS_TYPE = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "dr_grpo": "dr_grpo"}
TRL_SCALE_REWARDS = {"std": "group", "none": "none"}


# -- pure parts ---------------------------------------------------------------------------------
def steady_intervals(end_times: Sequence[float], warmup_steps: int) -> list[float]:
    """Seconds per step after warm-up, from the wall-clock times at which steps 1..n ended.

    Step ``k >= 2`` took ``end_times[k-1] - end_times[k-2]``; step 1 has no start time, so
    ``warmup_steps`` must be >= 1. Returns the durations of steps ``warmup_steps + 1 .. n``."""
    if warmup_steps < 1:
        raise ValueError(f"--warmup-steps {warmup_steps}: must be >= 1 (step 1 has no start time)")
    if len(end_times) <= warmup_steps:
        raise ValueError(f"{len(end_times)} steps ran but {warmup_steps} are warm-up: "
                         "raise --steps above --warmup-steps")
    durations = np.diff(np.asarray(end_times, dtype=float))
    return durations[warmup_steps - 1:].tolist()


def phase_breakdown(records: Sequence[dict[str, Any]], warmup_steps: int) -> dict[str, float]:
    """Median seconds of each memrl phase (``time/<phase>`` in metrics.jsonl) over the steps
    after warm-up, plus the median generation throughput."""
    kept = [r for r in records if "time/step" in r and int(r["step"]) > warmup_steps]
    if not kept:
        raise ValueError(f"metrics.jsonl has no training step after warm-up step {warmup_steps}")
    out = {phase: float(np.median([r[f"time/{phase}"] for r in kept])) for phase in PHASES}
    out["tokens_per_s"] = float(np.median([r["throughput/tokens_per_s"] for r in kept]))
    return out


def trl_batch_split(batch_size: int, micro_batch_size: int) -> tuple[int, int]:
    """``(per_device_train_batch_size, gradient_accumulation_steps)`` for TRL that takes one
    optimizer step over ``batch_size`` completions in as many micro-batches as memrl's learner
    (``ceil(batch_size / micro_batch_size)``), all of equal size."""
    accumulation = math.ceil(batch_size / micro_batch_size)
    if batch_size % accumulation:
        raise ValueError(
            f"grpo.batch_size={batch_size} does not split into {accumulation} equal micro-batches "
            f"of at most learner.micro_batch_size={micro_batch_size}, as TRL needs; pick a "
            "micro-batch size that divides the batch")
    return batch_size // accumulation, accumulation


def e2e_figures(memrl_steps: dict[str, Sequence[float]], trl_steps: Sequence[float]) -> dict[str, Any]:
    """Seconds-per-step summaries and ``speedup`` = TRL median / median of the first memrl row
    (the like-for-like one); ``speedup_<row>`` for every row."""
    if not memrl_steps:
        raise ValueError("e2e_figures needs at least one memrl row")
    trl = common.summarise(trl_steps)
    figures: dict[str, Any] = {"trl_s_per_step": trl, "trl_steps_s": list(trl_steps), "memrl": {}}
    for name, steps in memrl_steps.items():
        summary = common.summarise(steps)
        figures["memrl"][name] = {"s_per_step": summary, "steps_s": list(steps)}
        figures[f"speedup_{name}"] = common.ratio(trl["median"], summary["median"], name)
    figures["like_for_like_row"] = next(iter(memrl_steps))
    figures["speedup"] = figures[f"speedup_{figures['like_for_like_row']}"]
    figures["target_speedup"] = TARGET_SPEEDUP
    return figures


def parse_row(text: str) -> tuple[str, str, str]:
    """``"r1"``, ``"memoryr+:async"`` or ``"r1@vllm"`` -> (method, rollout mode, engine); the
    engine defaults to ``hf``."""
    spec, _, engine = text.partition("@")
    method, _, mode = spec.partition(":")
    mode, engine = mode or "sync", engine or "hf"
    if method not in METHODS or mode not in ("sync", "async") or engine not in ("hf", "vllm"):
        raise ValueError(f"--rows {text!r}: expected METHOD[:MODE][@ENGINE] with METHOD in "
                         f"{METHODS}, MODE sync or async and ENGINE hf or vllm")
    return method, mode, engine


def row_name(method: str, mode: str, engine: str) -> str:
    """The row's label: the method, then ``:async`` and ``@vllm`` when not the defaults."""
    return method + ("" if mode == "sync" else f":{mode}") + ("" if engine == "hf" else f"@{engine}")


def fastest(runs: dict[str, Sequence[float]]) -> str:
    """The configuration with the lowest median seconds per step (the baseline to beat)."""
    if not runs:
        raise ValueError("fastest got no runs")
    return min(runs, key=lambda name: float(np.median(runs[name])))


def trl_reward(records: Sequence[Record], composer: RewardComposer,
               max_completion_length: int) -> Callable[..., list[float]]:
    """A TRL reward function giving each completion memrl's total rule reward (the same
    ``RewardComposer`` the trainer's reward step runs). Rows are matched to ``records`` by the
    dataset's ``record_id`` column."""
    by_id = {r.id: r for r in records}

    def memrl_rule_reward(prompts: list[str], completions: list[str],
                          completion_ids: list[list[int]], record_id: list[str],
                          **_: Any) -> list[float]:
        recs = [by_id[i] for i in record_id]
        batch = RewardBatch(questions=[r.question for r in recs], completions=list(completions),
                            answers=[r.answer for r in recs],
                            completion_lengths=[len(ids) for ids in completion_ids],
                            max_completion_length=max_completion_length,
                            metas=[r.meta for r in recs])
        rule = composer.score(batch)
        return total_reward(rule.components, rule.weights).total.tolist()

    return memrl_rule_reward


# -- memrl --------------------------------------------------------------------------------------
class StepClock:
    """Wall-clock times at which memrl logged each training step.

    memrl's metrics hold per-phase durations but no timestamps, and the time between steps
    (dispatching prompts, logging) counts too, so the driver's ``MetricsWriter`` is wrapped
    for the duration of a run to stamp each training step as it is logged."""

    def __init__(self) -> None:
        self.end_times: list[float] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[StepClock]:
        from memrl.train import loop

        base, clock = loop.MetricsWriter, self

        class TimedMetricsWriter(base):  # type: ignore[misc, valid-type]
            def log(self, step: int, metrics: Any) -> None:
                super().log(step, metrics)
                if "time/step" in metrics:
                    clock.end_times.append(time.perf_counter())

        loop.MetricsWriter = TimedMetricsWriter
        try:
            yield self
        finally:
            loop.MetricsWriter = base


def memrl_overrides(method: str, mode: str, steps: int, run_dir: Path,
                    engine: str = "hf") -> list[str]:
    """Config overrides of one memrl row (start-up and bookkeeping kept out of the steps)."""
    return [f"method={method}", f"rollout.mode={mode}", f"output_dir={run_dir}",
            f"trainer.max_steps={steps}", "trainer.save_every_steps=0",
            "trainer.eval_before_after=false", "trainer.eval_every_steps=0",
            f"rollout.engine={engine}", "logging.progress_bar=false", "logging.tensorboard=false"]


def run_memrl(cfg: Config, warmup_steps: int) -> tuple[list[float], dict[str, float]]:
    """Train with ``cfg``; returns steady-state step seconds and the per-phase medians."""
    from memrl.train.loop import run_training
    from memrl.train.metrics import read_metrics

    with StepClock().installed() as clock:
        run_training(cfg)
    records = read_metrics(Path(cfg.output_dir))
    return steady_intervals(clock.end_times, warmup_steps), phase_breakdown(records, warmup_steps)


# -- TRL ----------------------------------------------------------------------------------------
def trl_rows(task: Any, tokenizer: Any, cfg: Config, steps: int) -> tuple[list[Record], list[dict[str, str]]]:
    """The records memrl's prompt stream hands out over ``steps`` steps, in order, and TRL
    dataset rows (prompt text rendered as the trainer renders it, and the record id)."""
    records = common.stream_records(task, cfg, steps * cfg.grpo.prompts_per_step)
    prompts = common.render_prompts(task, tokenizer, records, cfg)
    return records, [{"prompt": p, "record_id": r.id} for p, r in zip(prompts, records)]


def trl_config(cfg: Config, steps: int, out_dir: Path, use_vllm: bool = False) -> Any:
    """``GRPOConfig`` with memrl's settings under TRL's names (one optimizer step per
    generation batch, on CPU, no shuffling, no checkpoints, logging every step). ``use_vllm``:
    TRL's own vLLM generation in this process (``vllm_mode="colocate"``)."""
    from trl import GRPOConfig

    g, t = cfg.grpo, cfg.trainer
    per_device, accumulation = trl_batch_split(g.batch_size, cfg.learner.micro_batch_size)
    return GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, seed=cfg.seed,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, top_k=0, num_iterations=1,
        beta=g.beta, epsilon=g.clip_low, epsilon_high=g.clip_high,
        loss_type=TRL_LOSS_TYPE[g.loss_aggregation], scale_rewards=TRL_SCALE_REWARDS[g.scale_rewards],
        learning_rate=t.lr, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
        weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio, lr_scheduler_type="cosine",
        max_grad_norm=t.max_grad_norm, max_steps=steps, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, shuffle_dataset=False, dataloader_num_workers=0,
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False,
            "vllm_max_model_length": g.max_prompt_length + g.max_completion_length}
           if use_vllm else {}),
    )


def run_trl(cfg: Config, task: Any, model_path: str, tokenizer: Any, steps: int,
            warmup_steps: int, out_dir: Path, use_vllm: bool = False
            ) -> tuple[list[float], dict[str, float]]:
    """Train with TRL (its vLLM generation with ``use_vllm``); returns steady-state step
    seconds and TRL's phase medians."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    from memrl.train.setup import build_reward_plan

    plan = build_reward_plan(cfg, task)
    records, rows = trl_rows(task, tokenizer, cfg, steps)
    phases: dict[str, list[float]] = {"rollout": [], "generate": [], "reward": []}
    reward = trl_reward(records, RewardComposer(plan.specs), cfg.grpo.max_completion_length)

    @functools.wraps(reward)  # TRL logs the reward under the function's name
    def timed_reward(*args, **kwargs):
        start = time.perf_counter()
        out = reward(*args, **kwargs)
        phases["reward"].append(time.perf_counter() - start)
        return out

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs):  # generation, rewards, ref log-probs
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            phases["rollout"].append(time.perf_counter() - start)
            return out

        def _generate_single_turn(self, *args, **kwargs):
            start = time.perf_counter()
            out = super()._generate_single_turn(*args, **kwargs)
            phases["generate"].append(time.perf_counter() - start)
            return out

    class StepEnds(TrainerCallback):
        def __init__(self) -> None:
            self.end_times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.end_times.append(time.perf_counter())

    clock = StepEnds()
    trainer = TimedGRPOTrainer(
        model=model_path, processing_class=tokenizer, reward_funcs=timed_reward,
        args=trl_config(cfg, steps, out_dir, use_vllm), train_dataset=Dataset.from_list(rows),
        callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # keeps the table last on stdout
    trainer.train()
    medians = {name: float(np.median(values[warmup_steps:])) for name, values in phases.items()
               if len(values) > warmup_steps}
    return steady_intervals(clock.end_times, warmup_steps), medians


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per trainer")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps not timed")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="memrl rows, METHOD[:sync|async][@hf|vllm]; the first is compared "
                             "(speedup); default r1 memoryr+, then r1@vllm when vLLM works")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="run TRL (off: memrl rows only, no speedup)")
    parser.add_argument("--trl-vllm", action=argparse.BooleanOptionalAction, default=None,
                        help="also run TRL with its vLLM generation (colocate); default: when "
                             "vLLM works here. The faster TRL configuration is the baseline")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="config overrides for both sides, dotted.key=value "
                             "(e.g. grpo.max_completion_length=128)")
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from memrl.rollout.availability import vllm_available

    on_vllm = vllm_available()
    args.rows = args.rows or ["r1", "memoryr+", *(["r1@vllm"] if on_vllm else [])]
    rows = [parse_row(r) for r in args.rows]
    trl_modes = ["hf", *(["vllm"] if (on_vllm if args.trl_vllm is None else args.trl_vllm) else [])]

    import ray
    import torch

    common.one_thread()
    cfg = common.bench_config(args.overrides)
    task, model_path, tokenizer = common.prepare(cfg)
    g = cfg.grpo
    work = args.keep or Path(tempfile.mkdtemp(prefix="memrl-e2e-"))
    memrl_steps: dict[str, list[float]] = {}
    phases: dict[str, dict[str, float]] = {}
    trl_runs: dict[str, list[float]] = {}
    trl_phases_by_mode: dict[str, dict[str, float]] = {}
    trl_failures: dict[str, str] = {}
    try:
        for method, mode, engine in rows:
            name = row_name(method, mode, engine)
            run_cfg = common.bench_config([*args.overrides, *memrl_overrides(
                method, mode, args.steps, work / f"memrl-{method}-{mode}-{engine}", engine)])
            started = time.perf_counter()
            memrl_steps[name], phases[name] = run_memrl(run_cfg, args.warmup_steps)
            print(f"memrl {name}: {args.steps} steps in {time.perf_counter() - started:.1f} s "
                  f"(start-up included); steady {np.median(memrl_steps[name]):.3f} s/step")
        ray.shutdown()  # TRL gets the cores to itself
        # TRL's reward is the R1 rule rewards whatever method the overrides name
        trl_cfg = common.bench_config([*args.overrides, "method=r1"])
        for trl_mode in trl_modes if args.trl else []:
            started = time.perf_counter()
            try:
                trl_runs[trl_mode], trl_phases_by_mode[trl_mode] = run_trl(
                    trl_cfg, task, model_path, tokenizer, args.steps, args.warmup_steps,
                    work / f"trl-{trl_mode}", use_vllm=trl_mode == "vllm")
            except Exception as error:  # TRL's vLLM mode may not run here
                if trl_mode == "hf":
                    raise
                trl_failures[trl_mode] = f"{type(error).__name__}: {error}"
                print(f"TRL with vLLM could not run here: {trl_failures[trl_mode][:500]}")
                continue
            print(f"TRL ({trl_mode} generation): {args.steps} steps in "
                  f"{time.perf_counter() - started:.1f} s (start-up included); steady "
                  f"{np.median(trl_runs[trl_mode]):.3f} s/step")
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    baseline = fastest(trl_runs) if trl_runs else None
    trl_steps = trl_runs.get(baseline, []) if baseline else []
    trl_phases = trl_phases_by_mode.get(baseline, {}) if baseline else {}
    if trl_steps:
        figures = e2e_figures(memrl_steps, trl_steps)
    else:
        figures = {"memrl": {n: {"s_per_step": common.summarise(s), "steps_s": s}
                             for n, s in memrl_steps.items()}}
    figures["memrl_phases_s"] = phases
    figures["trl_phases_s"] = trl_phases
    figures["trl_baseline"] = baseline
    figures["trl_runs"] = {m: {"s_per_step": common.summarise(v), "steps_s": v}
                           for m, v in trl_runs.items()}
    figures["trl_failures"] = trl_failures
    figures["config"] = {"steps": args.steps, "warmup_steps": args.warmup_steps,
                         "rows": args.rows, "overrides": args.overrides, "model_path": model_path,
                         "num_generations": g.num_generations, "batch_size": g.batch_size,
                         "max_completion_length": g.max_completion_length, "beta": g.beta,
                         "clip": [g.clip_low, g.clip_high], "loss_aggregation": g.loss_aggregation,
                         "rollout_workers": cfg.rollout.num_workers,
                         "micro_batch_size": cfg.learner.micro_batch_size}
    figures["machine"] = {**common.machine(), "driver_torch_threads_after": torch.get_num_threads()}
    common.write_json(args.json, figures)

    print()
    print(f"{g.batch_size // g.num_generations} prompts x {g.num_generations} completions, "
          f"<= {g.max_completion_length} tokens, beta {g.beta}, clip {g.clip_low}/{g.clip_high}, "
          f"{g.loss_aggregation}; {args.steps} steps, first {args.warmup_steps} dropped; "
          f"memrl: {cfg.rollout.num_workers} rollout workers (@vllm rows: vLLM engine, else hf)")
    print("memrl phases, median s (reference overlaps score; train waits for it):")
    print(common.format_table(["row", *PHASES, "tok/s"],
                              [[n, *(p[k] for k in PHASES), p["tokens_per_s"]]
                               for n, p in phases.items()]))
    if trl_phases:
        print("TRL phases, median s: " + ", ".join(f"{k} {v:.3f}" for k, v in trl_phases.items())
              + " (rollout = generate + reward + reference log-probs)")
    table = [[f"memrl {n}", s["s_per_step"]["median"], s["s_per_step"]["p90"],
              figures.get(f"speedup_{n}", float("nan"))] for n, s in figures["memrl"].items()]
    for trl_mode, run in figures["trl_runs"].items():
        summary = run["s_per_step"]
        table.append([f"TRL GRPOTrainer ({trl_mode} generation)", summary["median"],
                      summary["p90"], common.ratio(figures["trl_s_per_step"]["median"],
                                                   summary["median"], "TRL mode")])
    print(common.format_table(["trainer", "median s/step", "p90", "TRL/this"], table))
    if trl_steps:
        print(f"speedup (TRL {baseline} generation, the faster TRL / memrl "
              f"{figures['like_for_like_row']}) = {figures['speedup']:.2f} "
              f"(target >= {TARGET_SPEEDUP})")
    return figures


if __name__ == "__main__":
    main()
