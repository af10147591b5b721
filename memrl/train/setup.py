"""Build the run's parts from the config: rewards, model folder, actor settings (the task:
:func:`memrl.tasks.build_task`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memrl.config import Config
from memrl.grpo.loss import LossSettings
from memrl.learner.policy import LearnerSettings
from memrl.memory.settings import MemorySettings
from memrl.model.loading import locate_model
from memrl.model.recipe import tiny_base_recipe
from memrl.model.warmstart import cached_tiny_model
from memrl.rewards.random_bonus import RandomBonus, read_intrinsic_schedule
from memrl.rewards.registry import RewardSpec
from memrl.rewards.total import RewardPlan, reward_plan
from memrl.tasks.base import Task


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
        random_bonus=random_bonus(cfg) if cfg.method == "r1+random" else None,
    )


def random_bonus(cfg: Config) -> RandomBonus:
    """``r1+random``'s bonus: the configured mean/std, or the matched run's per step (read and
    checked for every step of this run now, before anything starts)."""
    bonus = cfg.random_bonus
    if bonus.match_run is None:
        return RandomBonus.constant(bonus.mean, bonus.std, cfg.seed)
    means, stds = read_intrinsic_schedule(bonus.match_run, cfg.trainer.max_steps)
    return RandomBonus(seed=cfg.seed, means=means, stds=stds)


def cache_root(cfg: Config) -> Path:
    """Where built artefacts (the tiny model) are cached across runs."""
    root = cfg.model.tiny.cache_dir or os.environ.get("MEMRL_CACHE") or "~/.cache/memrl"
    return Path(root).expanduser()


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
        train_threads=cfg.learner.train_threads,
        rollout_overlaps=cfg.rollout.mode == "async",
        scoring_overlaps_reference=cfg.uses_memory,
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
