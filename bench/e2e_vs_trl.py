"""Benchmark: seconds per GRPO step, memrl (local Ray; hf and vLLM engines) vs TRL's GRPOTrainer
in its fastest configuration, in alternating rounds.

Both train the same model on arith with the same group size, batch, completion length,
sampling, loss settings (KL coefficient beta, clip epsilons, loss aggregation, reward
scaling), optimizer settings and step count:

- memrl: ``memrl.train.loop.run_training`` with the default config and overrides (no
  evaluation, no checkpoint until the end, no TensorBoard): the default's layout (one rollout
  worker generating step t+1 while the learner trains step t, ``model.dtype: auto``, the vLLM
  engine when it works here) unless the row names a mode or engine; its driver and actors run
  one torch thread per process. The like-for-like row is the first (default ``r1``, rule
  rewards only); ``memoryr+`` (adds the episodic-memory service) is an extra row, and
  ``r1:sync`` (two synchronous workers, on-policy) another.
- TRL: ``GRPOTrainer`` in every configuration of ``--trl-configs``, ``BACKEND:THREADS[:bf16]``:
  generation by transformers' ``generate``, its continuous batching (``cb``) or TRL's own
  vLLM (``use_vllm=True``, ``vllm_mode="colocate"``), with 1 torch thread or ``all``
  (``os.cpu_count()``), in float32 or with ``bf16=True`` (float32 weights under bfloat16
  autocast, the mixed precision memrl's ``model.dtype: auto`` computes in on a CPU with native
  bfloat16, where the default list includes it). Each run has
  a fresh process of its own whose OpenMP/MKL variables and ``torch.set_num_threads`` are set
  to that count (the count torch then reports is recorded; vLLM's CPU backend pins threads
  and keeps state a second run in one process would inherit). Gradient checkpointing is off
  (TRL 1.16 turns it on by default; memrl does not recompute), and TRL loads its reference
  model exactly when beta > 0 (memrl's learner computes reference log-probs then too). The
  configuration with the lowest median seconds per step is the baseline; one that fails is
  reported with its error. The JSON's ``trl_config`` records the baseline's settings
  (``torch_threads``, ``precision``, ``gradient_checkpointing``, ``generation_backend``,
  ``reference_model``) and ``trl_configs_tried`` all of them. Both see the same prompts in the same order (the
  records ``memrl train``'s prompt stream hands out, rendered by the same prompt builder, not
  shuffled) and the same reward: memrl's R1 rule rewards (``RewardComposer`` over the task's
  reward plan, correctness checked by ``memrl.verify``).

Rounds: ``--rounds`` rounds each run every memrl row and every TRL configuration once, memrl and
TRL alternating, in reverse order every other round, so a drift of the shared machine lands
on both sides. A run's median seconds per step is its round's value. ``speedup`` is the
median over rounds of (the TRL baseline's value / the like-for-like row's value in the same
round), given with its range, the per-round values and the lowest round.

Model: ``--model-size tiny`` is the embedded default's model; ``34m`` a random Llama (hidden 512,
8 layers, ``bench._common.RANDOM_SHAPES``) that cannot sample EOS (:func:`block_eos`), so every
completion on both sides runs to ``grpo.max_completion_length`` and generation and training,
not per-step overheads, take the time (the mean completion lengths are reported).

A step's time is the wall-clock time between the end of consecutive optimizer steps (memrl:
when the step's metrics are logged; TRL: ``on_step_end``), so everything between steps counts.
The first ``--warmup-steps`` steps are dropped on both sides. memrl's per-phase times come from
its ``metrics.jsonl`` (``time/*``; ``reference`` runs concurrently with ``score``, and
``train`` includes waiting for the rest of it); TRL's from timing its rollout method
(generation + rewards + reference log-probs), its generation call and the reward function.
Overrides that change ``task`` or ``model.tiny`` build (once) another tiny model.

Run from the repository root: ``python -m bench.e2e_vs_trl --json e2e_vs_trl.json``
(``--model-size 34m``; a quick look: ``--rounds 1 --trl-configs transformers:all``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench._common as common  # first: one thread per process, offline hubs
from memrl.config import METHODS, Config
from memrl.model.precision import auto_dtype, native_bf16_cpu
from memrl.rewards.batch import RewardBatch
from memrl.rewards.registry import RewardComposer
from memrl.rewards.total import total_reward
from memrl.tasks import build_task
from memrl.types import Record

# Issue 25: memrl's median over rounds >= these multiples of TRL's fastest configuration, and
# no round below TARGET_LOWEST_ROUND.
TARGET_SPEEDUP = {"tiny": 1.5, "34m": 2.0}
TARGET_LOWEST_ROUND = 1.3
MODEL_SIZES = tuple(TARGET_SPEEDUP)
PHASES = ("generate", "score", "memory", "reference", "train", "sync", "step")
# Rollout workers of a row that names its mode (rollout.mode), on a machine of ``cores`` cores.
ROLLOUT_WORKERS: dict[str, Callable[[int], int]] = {"sync": lambda cores: cores,
                                                    "async": lambda cores: max(1, cores - 1)}
TRL_BACKENDS = ("transformers", "cb", "vllm")
TRL_PRECISIONS = ("fp32", "bf16")
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
    after warm-up, plus the median generation throughput and mean completion length."""
    kept = [r for r in records if "time/step" in r and int(r["step"]) > warmup_steps]
    if not kept:
        raise ValueError(f"metrics.jsonl has no training step after warm-up step {warmup_steps}")
    out = {phase: float(np.median([r[f"time/{phase}"] for r in kept])) for phase in PHASES}
    out["tokens_per_s"] = float(np.median([r["throughput/tokens_per_s"] for r in kept]))
    out["completion_tokens"] = float(np.median([r["completion/length/mean"] for r in kept]))
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


@dataclass(frozen=True)
class TrlSetup:
    """One TRL configuration: generation ``backend`` (``transformers``' ``generate``, its
    continuous batching ``cb`` or TRL's ``vllm`` colocate mode), the torch ``threads`` of its
    process and the ``precision`` of its matmuls (``fp32``, or ``bf16``: TRL's ``bf16=True``,
    float32 weights under bfloat16 autocast)."""

    backend: str
    threads: int
    precision: str = "fp32"

    @property
    def name(self) -> str:
        return f"{self.backend}:{self.threads}" + (":bf16" if self.precision == "bf16" else "")


def parse_trl_setup(text: str, cpus: int) -> TrlSetup:
    """``"transformers:1"``, ``"vllm:all"`` (``all`` = ``cpus`` threads) or
    ``"cb:all:bf16"`` -> :class:`TrlSetup`."""
    backend, _, rest = text.partition(":")
    threads, _, precision = rest.partition(":")
    count = cpus if threads == "all" else int(threads) if threads.isdigit() else 0
    if backend not in TRL_BACKENDS or count < 1 or precision not in ("", *TRL_PRECISIONS):
        raise ValueError(f"--trl-configs {text!r}: expected BACKEND:THREADS[:bf16] with BACKEND in "
                         f"{TRL_BACKENDS} and THREADS a count >= 1 or 'all'")
    return TrlSetup(backend, count, precision or "fp32")


def default_trl_setups(cpus: int, on_vllm: bool, bf16: bool) -> list[str]:
    """``generate`` with 1 thread and with every core, with every core in bfloat16 too when
    the CPU multiplies bfloat16 natively (``bf16``), and TRL's vLLM mode with every core when
    vLLM works here (deduplicated on a 1-core machine). Continuous batching (``cb``) is left
    out: on the 34M model it generated 2.3-3.4x slower than ``generate`` here
    (docs/performance.md)."""
    names = ["transformers:1", f"transformers:{cpus}",
             *([f"transformers:{cpus}:bf16"] if bf16 else []), *([f"vllm:{cpus}"] if on_vllm else [])]
    return list(dict.fromkeys(names))


def round_order(memrl_rows: Sequence[str], trl_setups: Sequence[str], rounds: int) -> list[list[tuple[str, str]]]:
    """The runs of each round as ``("memrl", row)`` / ``("trl", setup)``: memrl and TRL
    alternate (rows and setups interleaved, the longer list's rest at the end) and every other
    round runs in reverse, so a drift of the machine falls on both sides alike."""
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: must be >= 1")
    memrl = [("memrl", r) for r in memrl_rows]
    trl = [("trl", t) for t in trl_setups]
    forward = [run for pair in zip(memrl, trl) for run in pair]
    forward += memrl[len(trl):] + trl[len(memrl):]
    return [forward if k % 2 == 0 else forward[::-1] for k in range(rounds)]


def round_medians(runs: Sequence[Sequence[float]]) -> list[float]:
    """Median seconds per step of each round's run."""
    return [float(np.median(steps)) for steps in runs]


def fastest(runs: dict[str, Sequence[float]]) -> str:
    """The configuration with the lowest median of ``runs[name]`` (per-round medians or step
    times): the baseline to beat."""
    if not runs:
        raise ValueError("fastest got no runs")
    return min(runs, key=lambda name: float(np.median(runs[name])))


def e2e_figures(memrl_runs: dict[str, Sequence[Sequence[float]]],
                trl_runs: dict[str, Sequence[Sequence[float]]]) -> dict[str, Any]:
    """Figures of the rounds: ``*_runs[name][k]`` are round ``k``'s steady step seconds.

    The TRL baseline is the configuration with the lowest median of its round medians;
    ``speedups[row]`` compares it with each memrl row round by round (TRL / memrl), and
    ``speedup`` (with ``speedup_range``, ``speedup_rounds``, ``speedup_lowest_round``) is the
    first, like-for-like row's."""
    if not memrl_runs or not trl_runs:
        raise ValueError("e2e_figures needs at least one memrl row and one TRL configuration")

    def summary(runs: Sequence[Sequence[float]]) -> dict[str, Any]:
        return {"s_per_step": common.summarise([s for run in runs for s in run]),
                "round_medians": round_medians(runs), "steps_s": [list(run) for run in runs]}

    figures: dict[str, Any] = {"memrl": {n: summary(r) for n, r in memrl_runs.items()},
                               "trl_runs": {n: summary(r) for n, r in trl_runs.items()}}
    baseline = fastest({n: f["round_medians"] for n, f in figures["trl_runs"].items()})
    trl_rounds = figures["trl_runs"][baseline]["round_medians"]
    figures["trl_baseline"] = baseline
    figures["speedups"] = {n: common.ratio_rounds(trl_rounds, f["round_medians"], f"TRL {baseline} / memrl {n}")
                           for n, f in figures["memrl"].items()}
    row = figures["like_for_like_row"] = next(iter(memrl_runs))
    headline = figures["speedups"][row]
    figures.update(speedup=headline["median"], speedup_range=[headline["min"], headline["max"]],
                   speedup_rounds=headline["per_round"], speedup_lowest_round=headline["min"])
    return figures


def parse_row(text: str) -> tuple[str, str | None, str | None]:
    """``"r1"``, ``"memoryr+:sync"`` or ``"r1:async@hf"`` -> (method, rollout mode, engine);
    a part left out (None) is the config's (the default: async, engine auto)."""
    spec, at, engine = text.partition("@")
    method, colon, mode = spec.partition(":")
    if (method not in METHODS or (colon and mode not in ROLLOUT_WORKERS)
            or (at and engine not in ("hf", "vllm"))):
        raise ValueError(f"--rows {text!r}: expected METHOD[:MODE][@ENGINE] with METHOD in "
                         f"{METHODS}, MODE sync or async and ENGINE hf or vllm")
    return method, mode or None, engine or None


def row_name(method: str, mode: str | None, engine: str | None) -> str:
    """The row's label: the method, then ``:MODE`` and ``@ENGINE`` where the row names them."""
    return method + (f":{mode}" if mode else "") + (f"@{engine}" if engine else "")


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


# -- the model ----------------------------------------------------------------------------------
# Residual coordinate 0 of the EOS-free model: every token's embedding holds EOS_BLOCK_LEVEL
# there, EOS's own row -EOS_BLOCK_DEPTH (see block_eos).
EOS_BLOCK_LEVEL = 0.1
EOS_BLOCK_DEPTH = 100.0


def block_eos(model: Any, eos_ids: Sequence[int]) -> None:
    """Make ``eos_ids`` unsamplable in a Llama with tied embeddings, in place.

    Residual coordinate 0 is held constant: every token's embedding has ``EOS_BLOCK_LEVEL``
    there and no attention or MLP block writes to it (row 0 of ``o_proj`` and ``down_proj``
    and their biases are zero). After the final RMSNorm it is the same positive number at
    every position, so it adds the same amount to every other token's logit (which sampling
    ignores) and, through the EOS rows (``-EOS_BLOCK_DEPTH`` there; the embeddings are tied),
    puts EOS's logit about ``EOS_BLOCK_DEPTH / EOS_BLOCK_LEVEL`` times that amount lower.
    Positions whose input is EOS (the chat template's) keep their own coordinate, unread by
    the others."""
    import torch

    if not model.config.tie_word_embeddings:
        raise ValueError("block_eos needs tied embeddings (the EOS row is both input and output)")
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[:, 0] = EOS_BLOCK_LEVEL
        embedding[list(eos_ids), 0] = -EOS_BLOCK_DEPTH
        for layer in model.model.layers:
            for projection in (layer.self_attn.o_proj, layer.mlp.down_proj):
                projection.weight[0] = 0.0
                if projection.bias is not None:
                    projection.bias[0] = 0.0


def full_length_model(size: str, cfg: Config, task: Any) -> str:
    """Folder of ``bench._common.random_model(size)`` with EOS blocked (:func:`block_eos`):
    every completion runs to the length limit, on memrl's engines and TRL's alike. Built once
    beside it in the memrl cache."""
    from transformers import AutoModelForCausalLM

    from memrl.rollout.engine import checkpoint_eos_ids, load_tokenizer

    base = common.random_model(size, cfg, task, "float32")
    folder = Path(f"{base}-no-eos")
    if (folder / "config.json").is_file():
        return str(folder)
    staging = folder.with_name(folder.name + ".partial")
    tokenizer = load_tokenizer(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype="float32")
    block_eos(model, checkpoint_eos_ids(base, tokenizer))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return str(folder)


def prepare_model(cfg: Config, size: str) -> tuple[Any, str, Any]:
    """The task, model folder and tokenizer of ``--model-size``: ``tiny`` is the config's
    model (``bench._common.prepare``), another size the EOS-free random model."""
    from memrl.rollout.engine import load_tokenizer

    if size == "tiny":
        return common.prepare(cfg)
    task = build_task(cfg)
    model_path = full_length_model(size, cfg, task)
    return task, model_path, load_tokenizer(model_path)


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


def memrl_overrides(method: str, mode: str | None, steps: int, run_dir: Path,
                    engine: str | None = None, cores: int = 2) -> list[str]:
    """Config overrides of one memrl row (start-up and bookkeeping kept out of the steps). A
    row that names its rollout mode gets that mode's layout on ``cores`` cores: ``sync`` one
    rollout worker per core (they take turns with the learner), ``async`` one fewer (the
    learner keeps a core while they generate)."""
    layout = ([] if mode is None else
              [f"rollout.mode={mode}", f"rollout.num_workers={ROLLOUT_WORKERS[mode](cores)}"])
    return [f"method={method}", *layout, f"output_dir={run_dir}",
            f"trainer.max_steps={steps}", "trainer.save_every_steps=0",
            "trainer.eval_before_after=false", "trainer.eval_every_steps=0",
            *([f"rollout.engine={engine}"] if engine else []),
            "logging.progress_bar=false", "logging.tensorboard=false"]


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


def trl_config(cfg: Config, steps: int, out_dir: Path, setup: TrlSetup = TrlSetup("transformers", 1)) -> Any:
    """``GRPOConfig`` with memrl's settings under TRL's names (one optimizer step per
    generation batch, on CPU, no shuffling, no checkpoints, logging every step) and no
    gradient checkpointing (TRL 1.16's default recomputes every forward; memrl's learner does
    not), generating and computing as ``setup`` says: TRL's own vLLM generation in this
    process (``vllm_mode="colocate"``), transformers' continuous batching, or ``generate``;
    ``bf16=True`` for the bfloat16 precision."""
    from trl import GRPOConfig

    g, t = cfg.grpo, cfg.trainer
    per_device, accumulation = trl_batch_split(g.batch_size, cfg.learner.micro_batch_size)
    return GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=setup.precision == "bf16", fp16=False, seed=cfg.seed,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, top_k=0, num_iterations=1,
        beta=g.beta, epsilon=g.clip_low, epsilon_high=g.clip_high,
        loss_type=TRL_LOSS_TYPE[g.loss_aggregation], scale_rewards=TRL_SCALE_REWARDS[g.scale_rewards],
        learning_rate=t.lr, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
        weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio, lr_scheduler_type="cosine",
        max_grad_norm=t.max_grad_norm, max_steps=steps, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, shuffle_dataset=False, dataloader_num_workers=0,
        gradient_checkpointing=False,
        use_transformers_continuous_batching=setup.backend == "cb",
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False,
            "vllm_max_model_length": g.max_prompt_length + g.max_completion_length}
           if setup.backend == "vllm" else {}),
    )


def trl_config_fields(args: Any, torch_threads: int) -> dict[str, Any]:
    """The settings of a ``GRPOConfig`` that decide TRL's speed, for the report."""
    backend = ("vllm" if args.use_vllm else "transformers continuous batching"
               if args.use_transformers_continuous_batching else "transformers")
    return {"generation_backend": backend, "vllm_mode": args.vllm_mode if args.use_vllm else None,
            "precision": "bf16" if args.bf16 else "fp32",
            "torch_threads": torch_threads, "gradient_checkpointing": bool(args.gradient_checkpointing),
            "reference_model": args.beta > 0, "beta": args.beta}


def run_trl(cfg: Config, task: Any, model_path: str, tokenizer: Any, steps: int,
            warmup_steps: int, out_dir: Path, setup: TrlSetup
            ) -> tuple[list[float], dict[str, float], dict[str, Any]]:
    """Train with TRL configured as ``setup`` says; returns steady-state step
    seconds, TRL's phase medians (and mean completion length) and what the trainer ran with:
    :func:`trl_config_fields` of its arguments, the torch threads of this process, whether the
    model was checkpointing gradients and whether a reference model was loaded."""
    import torch
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

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                phases.setdefault("completion_tokens", []).append(logs["completions/mean_length"])

    clock = StepEnds()
    trainer = TimedGRPOTrainer(
        model=model_path, processing_class=tokenizer, reward_funcs=timed_reward,
        args=trl_config(cfg, steps, out_dir, setup), train_dataset=Dataset.from_list(rows),
        callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # keeps the table last on stdout
    trainer.train()
    medians = {name: float(np.median(values[warmup_steps:])) for name, values in phases.items()
               if len(values) > warmup_steps}
    ran = {**trl_config_fields(trainer.args, torch.get_num_threads()),
           "model_gradient_checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
           "reference_model_loaded": trainer.ref_model is not None}
    return steady_intervals(clock.end_times, warmup_steps), medians, ran


def trl_process(setup: TrlSetup, overrides: Sequence[str], model_path: str, steps: int,
                warmup_steps: int, out_dir: Path) -> tuple[list[float], dict[str, float], dict[str, Any]]:
    """:func:`run_trl` in a process of its own, with ``setup.threads`` torch threads (the
    OpenMP/MKL variables too, for anything it starts)."""
    import torch

    from memrl.rollout.engine import load_tokenizer

    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(setup.threads)
    torch.set_num_threads(setup.threads)
    cfg = common.bench_config(overrides)
    return run_trl(cfg, build_task(cfg), model_path, load_tokenizer(model_path), steps,
                   warmup_steps, out_dir, setup)


def run_trl_isolated(setup: TrlSetup, overrides: Sequence[str], model_path: str, steps: int,
                     warmup_steps: int, out_dir: Path) -> tuple[list[float], dict[str, float], dict[str, Any]]:
    """:func:`trl_process` in a fresh spawned process (its start-up is not timed)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(trl_process, setup, list(overrides), model_path, steps, warmup_steps,
                           out_dir).result()


# -- main ---------------------------------------------------------------------------------------
def describe_trl(fields: dict[str, Any]) -> str:
    """One line naming a TRL configuration's settings that decide its speed."""
    return (f"{fields['generation_backend']} generation"
            + (f" ({fields['vllm_mode']})" if fields.get("vllm_mode") else "")
            + f", {fields['precision']}, {fields['torch_threads']} torch thread(s), gradient checkpointing "
            + ("on" if fields["gradient_checkpointing"] else "off")
            + (f", reference model loaded (beta {fields['beta']})" if fields["reference_model"]
               else ", no reference model (beta 0)"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=2, help="first steps not timed")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs every memrl row and TRL configuration once")
    parser.add_argument("--model-size", default="tiny", choices=MODEL_SIZES,
                        help="tiny: the default's model; 34m: a random hidden-512 x 8-layer Llama "
                             "whose completions all run to grpo.max_completion_length")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="memrl rows, METHOD[:sync|async][@hf|vllm]: a mode or engine left "
                             "out is the config's; a named mode brings its layout (sync: a "
                             "rollout worker per core, async: one fewer). The first is compared "
                             "(speedup); default r1 memoryr+ r1:sync")
    parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                        help="run TRL (off: memrl rows only, no speedup)")
    parser.add_argument("--trl-configs", nargs="+", default=None,
                        help="TRL configurations, BACKEND:THREADS[:bf16] with BACKEND transformers "
                             "(generate), cb (transformers' continuous batching) or vllm (TRL's "
                             "colocate mode), THREADS a count or all, and :bf16 for TRL's bf16=True; "
                             "the fastest is the baseline. Default transformers:1 transformers:all, "
                             "transformers:all:bf16 when the CPU has native bfloat16, and vllm:all "
                             "when vLLM works here")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="config overrides for both sides, dotted.key=value "
                             "(e.g. grpo.max_completion_length=128)")
    parser.add_argument("--keep", type=Path, default=None, help="keep run folders here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from memrl.rollout.availability import vllm_available

    on_vllm = vllm_available()
    cpus = os.cpu_count() or 1
    args.rows = args.rows or ["r1", "memoryr+", "r1:sync"]
    rows = {row_name(*parse_row(r)): parse_row(r) for r in args.rows}
    setups = {s.name: s for s in (parse_trl_setup(t, cpus) for t in
                                  (args.trl_configs or default_trl_setups(
                                      cpus, on_vllm, native_bf16_cpu())))} if args.trl else {}
    order = round_order(list(rows), list(setups), args.rounds)

    import ray
    import torch

    common.one_thread()
    cfg = common.bench_config(args.overrides)
    task, model_path, tokenizer = prepare_model(cfg, args.model_size)
    # Both sides train this model; TRL's reward is the R1 rule rewards whatever the method.
    shared = [*args.overrides, *([] if args.model_size == "tiny" else [f"model.name_or_path={model_path}"])]
    g = cfg.grpo
    work = args.keep or Path(tempfile.mkdtemp(prefix="memrl-e2e-"))
    memrl_runs: dict[str, list[list[float]]] = {name: [] for name in rows}
    memrl_phases: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    trl_runs: dict[str, list[list[float]]] = {}
    trl_phases: dict[str, list[dict[str, float]]] = {}
    trl_ran: dict[str, dict[str, Any]] = {}
    trl_failures: dict[str, str] = {}
    try:
        for k, runs in enumerate(order):
            print(f"round {k + 1}/{args.rounds}: " + ", ".join(
                f"memrl {n}" if kind == "memrl" else f"TRL {n}" for kind, n in runs))
            for kind, name in runs:
                started = time.perf_counter()
                run_dir = work / f"{kind}-{name.replace(':', '-').replace('@', '-')}-round{k + 1}"
                if kind == "memrl":
                    method, mode, engine = rows[name]
                    run_cfg = common.bench_config([*shared, *memrl_overrides(
                        method, mode, args.steps, run_dir, engine, cpus)])
                    steps_s, phases = run_memrl(run_cfg, args.warmup_steps)
                    ray.shutdown()  # the next run (TRL's) gets the cores to itself
                    memrl_runs[name].append(steps_s)
                    memrl_phases[name].append(phases)
                    label = f"memrl {name}"
                elif name in trl_failures:
                    continue
                else:
                    try:
                        steps_s, phases, ran = run_trl_isolated(
                            setups[name], [*shared, "method=r1"], model_path, args.steps,
                            args.warmup_steps, run_dir)
                    except Exception as error:  # e.g. TRL's vLLM mode may not run here
                        # the child's traceback (concurrent.futures attaches it as the cause)
                        where = getattr(error.__cause__, "tb", "").strip().splitlines()[-4:-1]
                        trl_failures[name] = f"round {k + 1}: {type(error).__name__}: {error}" + "".join(
                            f"\n  {line.strip()}" for line in where)
                        print(f"TRL {name} could not run: {trl_failures[name][:800]}")
                        trl_runs.pop(name, None)
                        continue
                    trl_runs.setdefault(name, []).append(steps_s)
                    trl_phases.setdefault(name, []).append(phases)
                    trl_ran[name] = ran
                    label = f"TRL {name} (torch reports {ran['torch_threads']} thread(s))"
                print(f"  {label}: {args.steps} steps in {time.perf_counter() - started:.1f} s "
                      f"(start-up included); steady {np.median(steps_s):.3f} s/step")
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    def median_phases(per_round: list[dict[str, float]]) -> dict[str, float]:
        return {key: float(np.median([p[key] for p in per_round if key in p]))
                for key in dict.fromkeys(key for p in per_round for key in p)}

    if trl_runs:
        figures = e2e_figures(memrl_runs, trl_runs)
        figures["trl_config"] = {"name": figures["trl_baseline"], **trl_ran[figures["trl_baseline"]]}
    else:
        figures = {"memrl": {n: {"s_per_step": common.summarise([s for r in runs for s in r]),
                                 "round_medians": round_medians(runs), "steps_s": runs}
                             for n, runs in memrl_runs.items()}, "trl_runs": {}}
    target = TARGET_SPEEDUP[args.model_size]
    figures.update(target_speedup=target, target_lowest_round=TARGET_LOWEST_ROUND, rounds=args.rounds,
                   order=[[f"{kind} {n}" for kind, n in runs] for runs in order])
    figures["trl_configs_tried"] = {n: trl_ran.get(n, {"failed": trl_failures.get(n)}) for n in setups}
    figures["trl_failures"] = trl_failures
    figures["memrl_phases_s"] = {n: median_phases(p) for n, p in memrl_phases.items()}
    figures["trl_phases_s"] = {n: median_phases(p) for n, p in trl_phases.items()}
    figures["config"] = {"steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
                         "model_size": args.model_size, "rows": args.rows, "trl_configs": list(setups),
                         "overrides": args.overrides, "model_path": model_path,
                         "num_generations": g.num_generations, "batch_size": g.batch_size,
                         "max_completion_length": g.max_completion_length, "beta": g.beta,
                         "clip": [g.clip_low, g.clip_high], "loss_aggregation": g.loss_aggregation,
                         "rollout_workers": cfg.rollout.num_workers,
                         "micro_batch_size": cfg.learner.micro_batch_size}
    figures["machine"] = {**common.machine(), "driver_torch_threads_after": torch.get_num_threads()}
    common.write_json(args.json, figures)
    print_report(figures, cfg)
    if args.trl and not trl_runs:
        raise RuntimeError(f"no TRL configuration ran every round, so no baseline: {trl_failures}")
    return figures


def print_report(figures: dict[str, Any], cfg: Config) -> None:
    """The closing note: settings, phases, the per-round table, the headline and TRL's setup."""
    g, c = cfg.grpo, figures["config"]
    print()
    print(f"model {c['model_size']}; {g.batch_size // g.num_generations} prompts x {g.num_generations} "
          f"completions, <= {g.max_completion_length} tokens, beta {g.beta}, clip {g.clip_low}/"
          f"{g.clip_high}, {g.loss_aggregation}; {c['steps']} steps per run, first {c['warmup_steps']} "
          f"dropped; {c['rounds']} round(s), memrl and TRL alternating; memrl rows without a mode: "
          f"rollout.mode {cfg.rollout.mode}, {cfg.rollout.num_workers} rollout worker(s) of 1 thread, "
          f"engine {cfg.rollout.engine}, model.dtype {cfg.model.dtype} (auto here: "
          f"{auto_dtype(on_cpu=True)})")
    print("memrl phases, median s (reference overlaps score; train waits for it):")
    print(common.format_table(["row", *PHASES, "tok/s", "tokens"],
                              [[n, *(p[k] for k in PHASES), p["tokens_per_s"], p["completion_tokens"]]
                               for n, p in figures["memrl_phases_s"].items()]))
    for name, p in figures["trl_phases_s"].items():
        print(f"TRL {name} phases, median s: " + ", ".join(f"{k} {v:.3f}" for k, v in p.items())
              + " (rollout = generate + reward + reference log-probs; completion_tokens: mean length)")
    speedups = figures.get("speedups", {})
    rounds = range(1, c["rounds"] + 1)
    table = []
    for side, runs in (("memrl", figures["memrl"]), ("TRL", figures["trl_runs"])):
        for name, run in runs.items():
            medians = run["round_medians"]
            ratio = speedups.get(name) if side == "memrl" else None
            table.append([f"{side} {name}", float(np.median(medians)), min(medians), max(medians),
                          *medians, ratio["median"] if ratio else "",
                          f"{ratio['min']:.2f}-{ratio['max']:.2f}" if ratio else ""])
    print(common.format_table(["run", "median s/step", "min", "max", *(f"round {k}" for k in rounds),
                               "TRL/this", "range"], table))
    if "speedup" not in figures:
        return
    print(f"speedup (TRL {figures['trl_baseline']}, the fastest TRL configuration / memrl "
          f"{figures['like_for_like_row']}), median over {c['rounds']} round(s) = {figures['speedup']:.2f} "
          f"(range {figures['speedup_range'][0]:.2f}-{figures['speedup_range'][1]:.2f}; rounds "
          + ", ".join(f"{r:.2f}" for r in figures["speedup_rounds"])
          + f"; lowest {figures['speedup_lowest_round']:.2f}); target >= {figures['target_speedup']}, "
          f"lowest round >= {figures['target_lowest_round']}")
    ran = figures["trl_config"]
    print(f"TRL baseline {ran['name']}: {describe_trl(ran)}; torch reported {ran['torch_threads']} "
          f"thread(s), model checkpointing gradients: {ran['model_gradient_checkpointing']}")
    for name, failure in figures["trl_failures"].items():
        print(f"TRL {name} failed ({failure[:200]})")


if __name__ == "__main__":
    main()
