"""Benchmark: memrl's learner step against a bare PyTorch training step, in one run.

The sequences are a real training step of the embedded default: its first 8 prompts × 8
completions sampled by the default's model with the default's sampling settings. Every
variant trains on exactly these sequences with the same micro-batches, optimiser (AdamW,
the same learning rate, weight-decay groups and gradient clipping) and loss settings (the
reference model's KL term when ``beta > 0``):

- ``bare padded``: plain PyTorch and Hugging Face, the way a training step is usually written:
  one padded row per completion (prompt left-padded, completion right-padded), the full model
  forward (logits at every position), log-softmax, the policy-gradient + KL loss,
  ``backward``, clipping, ``optimizer.step()``; the reference forward runs the same way.
- ``memrl padded``: ``PolicyTrainer`` (DeepSpeed engine, GRPO loss, statistics) with packing
  off: the same layout as bare, i.e. identical work; its ratio to bare is memrl's overhead.
- ``memrl``: ``PolicyTrainer`` as ``memrl train`` runs it (packed: no padding, one prompt
  forward per group; see ``memrl.learner.packing``).
- ``memrl Ray ×1`` / ``×2``: the ``LearnerGroup`` actors as the trainer drives them (1 or 2
  data-parallel ranks, each one CPU), batch through the object store.

A step's time is the reference log-probs plus the update (what a learner does per step). The
variants take turns step by step, so a slow moment of a shared machine hits them alike; the
first ``--warmup-steps`` steps are dropped. Tokens/s counts real tokens (prompt and completion
of every completion, none of the padding); ``pad share`` is the share of the positions a
forward computes that are padding; ``computed`` counts those positions per step (policy
forward; the packed layout computes a group's prompt once).

``overhead_vs_bare`` (top level of ``--json``): memrl seconds / bare padded seconds, default
model, one learner (below 1: faster than the bare padded step).

Run from the repository root: ``python -m bench.learner --json learner.json``
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import bench._common as common  # first: one thread per process, offline hubs
from memrl.config import Config
from memrl.learner.batching import micro_batch_bounds, micro_batches_needed, policy_inputs
from memrl.learner.packing import pack_completions
from memrl.learner.policy import LearnerSettings, PolicyTrainer, adamw_param_groups
from memrl.types import RolloutBatch

# The larger tiny model of the issue: hidden 512, 8 layers (34M parameters with the default's
# 512-token vocabulary), random weights: the step's cost does not depend on them.
LARGER = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
          "num_key_value_heads": 8, "intermediate_size": 2048}
MODELS = ("default", "larger")


# -- pure parts ---------------------------------------------------------------------------------
def token_counts(batch: RolloutBatch, micro_batch_size: int) -> dict[str, int]:
    """Real tokens of ``batch`` (prompt + completion of every row), and the positions one
    policy forward computes in the padded layout (``padded``) and in the packed one
    (``packed``, of which ``packed_real`` hold a token), micro-batch by micro-batch."""
    real = int(batch.prompt_mask.sum() + batch.completion_mask.sum())
    padded = packed = packed_real = 0
    passes = micro_batches_needed(batch.num_completions, micro_batch_size)
    for start, stop in micro_batch_bounds(batch.num_completions, passes):
        rows = slice(start, stop)
        padded += (stop - start) * (batch.prompt_ids.shape[1] + batch.completion_ids.shape[1])
        layout = pack_completions(batch.prompt_ids[rows], batch.prompt_mask[rows],
                                  batch.completion_ids[rows], batch.completion_mask[rows])
        packed += layout.computed_tokens
        packed_real += int(layout.row_lengths.sum())
    return {"real": real, "padded": padded, "packed": packed, "packed_real": packed_real}


def pad_share(counts: dict[str, int], packed: bool) -> float:
    """Share of the computed positions of a layout that hold no token (``token_counts``)."""
    if packed:
        return 1.0 - counts["packed_real"] / counts["packed"]
    return 1.0 - counts["real"] / counts["padded"]


def learner_figures(seconds: dict[str, list[float]], real_tokens: int) -> dict[str, Any]:
    """Per variant: seconds per step (summary) and real tokens/s (median); plus each
    variant's median seconds over ``bare padded``'s."""
    out: dict[str, Any] = {}
    bare = common.summarise(seconds["bare padded"])["median"]
    for name, values in seconds.items():
        summary = common.summarise(values)
        out[name] = {"seconds": summary,
                     "tokens_per_s": common.ratio(real_tokens, summary["median"], f"{name} tokens/s"),
                     "vs_bare": common.ratio(summary["median"], bare, f"{name} / bare padded")}
    return out


# -- the sequences and the models ---------------------------------------------------------------
def sample_step(cfg: Config, model_path: str, tokenizer: Any) -> RolloutBatch:
    """The default's first training step: its prompts, sampled as a rollout worker does."""
    from memrl.cluster.requests import request_seed, training_sampling
    from memrl.rollout.hf_engine import HFEngine
    from memrl.tasks import build_task

    task = build_task(cfg)
    records = common.stream_records(task, cfg, cfg.grpo.batch_size // cfg.grpo.num_generations)
    prompts = common.render_prompts(task, tokenizer, records, cfg)
    engine = HFEngine(model_path, seed=cfg.seed)
    sampling = training_sampling(cfg.grpo, seed=request_seed(cfg.seed, 0, 0))
    return engine.generate(prompts, [r.id for r in records], sampling)


def larger_model(cfg: Config, default_path: str) -> str:
    """The default's model with the ``LARGER`` shape and random weights (same tokenizer),
    built once under the memrl cache."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from memrl.train.setup import cache_root

    folder = cache_root(cfg) / "bench-learner-512x8"
    if (folder / "config.json").is_file():
        return str(folder)
    config = AutoConfig.from_pretrained(default_path)
    for key, value in LARGER.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    staging = folder.with_name(folder.name + ".partial")
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(default_path).save_pretrained(staging)
    staging.rename(folder)
    return str(folder)


# -- the variants -------------------------------------------------------------------------------
class BareStep:
    """A plain PyTorch/Hugging Face GRPO step on the padded layout (module docstring)."""

    def __init__(self, settings: LearnerSettings) -> None:
        from transformers import AutoModelForCausalLM

        def load() -> torch.nn.Module:
            return AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=torch.float32)

        self.settings = settings
        self.model = load().train()
        self.reference = load().eval().requires_grad_(False) if settings.loss.beta > 0 else None
        self.optimizer = torch.optim.AdamW(adamw_param_groups(self.model, settings.weight_decay),
                                           lr=settings.lr, betas=settings.betas)

    def _logprobs(self, model: torch.nn.Module, batch: RolloutBatch, rows: slice) -> torch.Tensor:
        ids, attention, positions = policy_inputs(batch.prompt_ids[rows], batch.prompt_mask[rows],
                                                  batch.completion_ids[rows],
                                                  batch.completion_mask[rows])
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        p = batch.prompt_ids.shape[1]
        logp = torch.log_softmax(logits[:, p - 1:-1].float() / self.settings.temperature, dim=-1)
        return logp.gather(-1, batch.completion_ids[rows, :, None])[..., 0]

    def step(self, batch: RolloutBatch, advantages: torch.Tensor) -> None:
        passes = micro_batches_needed(batch.num_completions, self.settings.micro_batch_size)
        bounds = micro_batch_bounds(batch.num_completions, passes)
        mask = batch.completion_mask.float()
        refs = []
        if self.reference is not None:
            with torch.no_grad():
                refs = [self._logprobs(self.reference, batch, slice(a, b)) for a, b in bounds]
        tokens = mask.sum()
        for i, (a, b) in enumerate(bounds):
            logp = self._logprobs(self.model, batch, slice(a, b))
            per_token = -advantages[a:b, None] * logp
            if refs:
                d = refs[i] - logp
                per_token = per_token + self.settings.loss.beta * (torch.exp(d) - d - 1)
            ((per_token * mask[a:b]).sum() / tokens).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class TrainerStep:
    """``PolicyTrainer`` in this process: reference log-probs, then ``optimizer_step``."""

    def __init__(self, settings: LearnerSettings) -> None:
        self.trainer = PolicyTrainer(settings, device="cpu")

    def step(self, batch: RolloutBatch, advantages: torch.Tensor) -> None:
        ref = self.trainer.ref_logprobs(batch) if self.trainer.reference is not None else None
        self.trainer.optimizer_step(batch, advantages, ref_logp=ref)


class GroupStep:
    """The Ray ``LearnerGroup`` as the trainer drives it (``begin_step`` + ``finish_step``)."""

    def __init__(self, settings: LearnerSettings, learners: int) -> None:
        from actors.learner import LearnerGroup

        self.group = LearnerGroup(settings, learners, num_cpus_per_learner=1, timeout_s=600)

    def step(self, batch: RolloutBatch, advantages: torch.Tensor) -> None:
        self.group.train_on_batch(batch, advantages)

    def close(self) -> None:
        self.group.shutdown()


@contextlib.contextmanager
def local_ray(needed: bool) -> Iterator[None]:
    """A local Ray cluster for the Ray rows (one thread per actor, offline hubs)."""
    if not needed:
        yield
        return
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}})
    try:
        yield
    finally:
        ray.shutdown()


def interleaved(variants: dict[str, Callable[[], None]], steps: int, warmup: int
                ) -> dict[str, list[float]]:
    """Seconds of each variant's steps after ``warmup``, the variants taking turns."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(warmup + steps):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            if step >= warmup:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def measure_model(settings: LearnerSettings, batch: RolloutBatch, advantages: torch.Tensor,
                  learners: Sequence[int], steps: int, warmup: int) -> dict[str, list[float]]:
    """The interleaved seconds of every variant on one model."""
    variants: dict[str, Any] = {
        "bare padded": BareStep(settings),
        "memrl padded": TrainerStep(LearnerSettings(**{**vars(settings), "pack_sequences": False})),
        "memrl": TrainerStep(settings),
    }
    groups = {f"memrl Ray x{k}": GroupStep(settings, k) for k in learners}
    variants.update(groups)
    try:
        return interleaved({name: (lambda v=v: v.step(batch, advantages))
                            for name, v in variants.items()}, steps, warmup)
    finally:
        for group in groups.values():
            group.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--learners", nargs="*", type=int, default=[1, 2],
                        help="Ray LearnerGroup rows (data-parallel ranks); none: in-process only")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[],
                        help="config overrides, dotted.key=value")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    common.one_thread()
    from memrl.learner.distributed import free_port, set_rank_env
    from memrl.train.setup import learner_settings

    cfg = common.bench_config(args.overrides)
    _, default_path, tokenizer = common.prepare(cfg)
    batch = sample_step(cfg, default_path, tokenizer)
    advantages = torch.randn(batch.num_completions, generator=torch.Generator().manual_seed(0))
    counts = token_counts(batch, cfg.learner.micro_batch_size)
    set_rank_env(0, 1, "127.0.0.1", free_port())  # the in-process trainers: rank 0 of 1

    figures: dict[str, Any] = {"machine": common.machine(), "config": list(args.overrides),
                               "batch": {"completions": batch.num_completions,
                                         "prompt_width": batch.prompt_ids.shape[1],
                                         "completion_width": batch.completion_ids.shape[1],
                                         "tokens": counts},
                               "models": {}}
    rows = []
    with local_ray(bool(args.learners)):
        for name in args.models:
            path = default_path if name == "default" else larger_model(cfg, default_path)
            settings = learner_settings(cfg, path)
            seconds = measure_model(settings, batch, advantages, args.learners, args.steps,
                                    args.warmup_steps)
            result = learner_figures(seconds, counts["real"])
            figures["models"][name] = result
            for variant, entry in result.items():
                packed = variant != "bare padded" and variant != "memrl padded"
                computed = counts["packed" if packed else "padded"]
                entry["pad_share"] = pad_share(counts, packed)
                entry["computed_tokens"] = computed
                rows.append([f"{name} {variant}", entry["seconds"]["median"], entry["tokens_per_s"],
                             entry["pad_share"], computed, entry["vs_bare"]])
    if "default" in figures["models"]:
        figures["overhead_vs_bare"] = figures["models"]["default"]["memrl"]["vs_bare"]
        figures["overhead_identical_work"] = figures["models"]["default"]["memrl padded"]["vs_bare"]
    print(common.format_table(["step", "s/step", "real tok/s", "pad share", "computed", "vs bare"],
                              rows))
    common.write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
