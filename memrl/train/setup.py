"""Build the run's parts from the config: task, rewards, model folder, actor settings."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memrl.config import Config
from memrl.grpo.loss import LossSettings
from memrl.learner.policy import LearnerSettings
from memrl.memory.settings import MemorySettings
from memrl.model.loading import locate_model
from memrl.model.warmstart import Example, cached_tiny_model
from memrl.prompts import build_messages
from memrl.rewards.registry import RewardSpec
from memrl.rewards.total import RewardPlan, reward_plan
from memrl.tasks import resolve_task
from memrl.tasks.base import Task
from memrl.types import Record


def build_task(cfg: Config) -> Task:
    """The configured task (built-in or by import path), as its ``from_config`` reads the
    ``task`` and ``data`` sections (local files when ``data.path``/``data.eval_path`` are set)."""
    return resolve_task(cfg.task.name).from_config(cfg.task, cfg.data)


def build_reward_plan(cfg: Config, task: Task) -> RewardPlan:
    """The method's rewards for this task (or the user's ``rewards`` list)."""
    user = None
    if cfg.rewards is not None:
        user = [RewardSpec(fn=r.fn, weight=r.weight, kwargs=dict(r.kwargs)) for r in cfg.rewards]
    return reward_plan(
        cfg.method,
        task.rule_rewards,
        task.correctness_reward,
        verifier=cfg.task.verifier,
        reference=cfg.memory.mode == "reference",
        lambda_exploit=cfg.memory.lambda_exploit,
        lambda_explore=cfg.memory.lambda_explore,
        user_specs=user,
    )


def cache_root(cfg: Config) -> Path:
    """Where built artefacts (the tiny model) are cached across runs."""
    root = cfg.model.tiny.cache_dir or os.environ.get("MEMRL_CACHE") or "~/.cache/memrl"
    return Path(root).expanduser()


def warmstart_completions(task: Task, records: list[Record], free_text_fraction: float,
                          seed: int) -> list[str]:
    """One warm-start demonstration per record (:meth:`Task.demonstration`); each is free text with probability
    ``free_text_fraction`` (drawn from a stream seeded by ``seed`` alone, so the prompts'
    exemplar draws do not depend on the fraction), else in the task's answer format."""
    draws = random.Random(f"free-text:{seed}")
    return [task.demonstration(r, free_text=draws.random() < free_text_fraction) for r in records]


@dataclass(frozen=True)
class TinyBaseRecipe:
    """How the offline tiny base is built: the spec (its cache key) and the data makers that
    :func:`memrl.model.warmstart.cached_tiny_model` calls only when it must build."""

    spec: dict[str, Any]
    texts: Callable[[], list[str]]
    examples: Callable[[], list[Example]]
    habit_examples: Callable[[], list[Example]] | None


def tiny_base_recipe(cfg: Config, task: Task) -> TinyBaseRecipe:
    """The recipe of ``model.tiny``: tokenizer text, warm-start demonstrations (the first
    ``warmstart_examples`` training records) and, with ``habit_steps``, the second stage's
    demonstrations (the next ``warmstart_examples`` records, ``habit_direct_fraction`` of them
    direct answers)."""
    tiny = cfg.model.tiny
    train = task.dataset("train")
    n = min(tiny.warmstart_examples, len(train))
    records = [train[i] for i in range(n)]
    completions = warmstart_completions(task, records, tiny.warmstart_free_text_fraction, tiny.seed)
    habit: list[tuple[Record, str]] = []
    if tiny.habit_steps:
        draws = random.Random(f"habit:{tiny.seed}")
        habit = [(r, task.demonstration(r, direct=draws.random() < tiny.habit_direct_fraction))
                 for r in (train[i] for i in range(n, min(2 * n, len(train))))]
    rng = random.Random(tiny.seed)

    def texts() -> list[str]:
        corpus = [task.system_prompt] + [q for q, _ in task.exemplars] + [a for _, a in task.exemplars]
        for r, completion in zip(records, completions):
            corpus += [r.question, completion]
        # Both answer styles of every second-stage record, whichever its draw picked: the
        # tokenizer (and so the first stage) does not change with habit_direct_fraction.
        for r, _ in habit:
            corpus += [r.question, task.demonstration(r), task.demonstration(r, direct=True)]
        return corpus

    def demonstrations(pairs: list[tuple[Record, str]]) -> list[Example]:
        return [
            (build_messages(r.question, system_prompt=task.system_prompt, exemplars=task.exemplars,
                            num_shots=cfg.task.num_shots, rng=rng), completion)
            for r, completion in pairs
        ]

    sizes = tiny.model_dump(exclude={"warmstart_steps", "warmstart_lr", "warmstart_batch_size",
                                     "warmstart_examples", "warmstart_free_text_fraction",
                                     "habit_steps", "habit_lr", "habit_direct_fraction", "cache_dir"})
    spec: dict[str, Any] = {
        "model": sizes,
        "warmstart": {"steps": tiny.warmstart_steps, "lr": tiny.warmstart_lr,
                      "batch_size": tiny.warmstart_batch_size, "seed": tiny.seed},
        # Not arguments: recorded so that different warm-start data gets a different folder.
        # task.options only when set, so the cache keys of built-in tasks' models stay the same.
        "data": {"task": cfg.task.model_dump(mode="json", exclude={"eval_size"} | (
                     set() if cfg.task.options else {"options"})),
                 "files": cfg.data.model_dump(mode="json"), "examples": n, "format": 1,
                 "free_text_fraction": tiny.warmstart_free_text_fraction},
    }
    if habit:
        spec["habit"] = {"steps": tiny.habit_steps, "lr": tiny.habit_lr,
                         "batch_size": tiny.warmstart_batch_size, "seed": tiny.seed}
        spec["data"]["habit_direct_fraction"] = tiny.habit_direct_fraction
    return TinyBaseRecipe(
        spec=spec, texts=texts,
        examples=lambda: demonstrations(list(zip(records, completions))),
        habit_examples=(lambda: demonstrations(habit)) if habit else None)


def prepare_model(cfg: Config, task: Task) -> str:
    """The policy's model folder or hub id; the offline tiny model is the shipped base when
    memrl ships one for this config, else built once and cached."""
    if cfg.model.name_or_path != "tiny":
        # Fail here, naming the model and what to do, rather than with a traceback from the
        # first loader; the id itself is passed on (each node reads its own cache).
        locate_model(cfg.model.name_or_path)
        return cfg.model.name_or_path
    recipe = tiny_base_recipe(cfg, task)
    return str(cached_tiny_model(cache_root(cfg), recipe.spec, recipe.texts, recipe.examples,
                                 recipe.habit_examples))


def learner_settings(cfg: Config, model_path: str) -> LearnerSettings:
    """The learner ranks' settings from the ``trainer``, ``grpo`` and ``learner`` sections."""
    g, t = cfg.grpo, cfg.trainer
    return LearnerSettings(
        model_path=model_path,
        max_steps=t.max_steps,
        lr=t.lr,
        betas=(t.adam_beta1, t.adam_beta2),
        weight_decay=t.weight_decay,
        warmup_ratio=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm,
        zero_stage=cfg.learner.zero_stage,
        bf16={"auto": None, "bfloat16": True}.get(cfg.model.dtype, False),
        micro_batch_size=cfg.learner.micro_batch_size,
        loss=LossSettings(
            clip_low=g.clip_low,
            clip_high=g.clip_high,
            beta=g.beta,
            aggregation=g.loss_aggregation,
            max_completion_length=g.max_completion_length,
            is_cap=cfg.rollout.is_cap if cfg.rollout.mode == "async" else None,
        ),
        temperature=g.temperature,
        gradient_checkpointing=cfg.learner.gradient_checkpointing,
        seed=cfg.seed,
        collective_timeout_s=t.timeout_s,
    )


def memory_settings(cfg: Config) -> MemorySettings:
    """The memory service's settings from the ``memory`` section and the method."""
    # device auto: the GPU index when the actor got a GPU and FAISS has GPU support
    return MemorySettings.from_config(cfg.memory, use_explore=cfg.uses_explore, device="auto")


def rollout_worker_factory(cfg: Config, model_path: str) -> Callable[[str], Any]:
    """``worker_id -> actor handle``: a rollout worker with the configured resources, engine,
    seed and vLLM options, loading ``model_path`` (the trainer and the benchmarks use this)."""
    from memrl.actors.rollout import make_rollout_worker_class

    worker_cls = make_rollout_worker_class(cfg.rollout.num_cpus_per_worker,
                                           cfg.rollout.num_gpus_per_worker, cfg.rollout.resources)
    vllm_kwargs = {"gpu_memory_utilization": cfg.rollout.gpu_memory_utilization,
                   "max_model_len": cfg.grpo.max_prompt_length + cfg.grpo.max_completion_length}

    # The engines compute in the learner's dtype, so behaviour log-probs match its recomputation.
    engine_kwargs = {"dtype": cfg.model.dtype}

    def make_worker(worker_id: str) -> Any:
        return worker_cls.remote(worker_id, model_path, cfg.rollout.engine, engine_kwargs,
                                 cfg.seed, vllm_kwargs=vllm_kwargs)

    return make_worker
