"""Memory-R+ GRPO in one file and one process, no Ray: the loop that ``memrl train`` distributes.

    python examples/minimal_grpo.py --steps 20                  # the default config: tiny model
    python examples/minimal_grpo.py --steps 20 method=r1 rollout.engine=hf
    python examples/minimal_grpo.py --config configs/gsm8k_base.yaml --save runs/minimal/model

It reads the same config as ``memrl train`` (a YAML file and dotted overrides) and builds its
parts from memrl's own modules. Each step:

1. sample ``grpo.num_generations`` completions for each of the step's prompts (memrl.rollout);
2. score them, R = Σ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore (memrl.rewards.total): rule rewards
   (memrl.rewards), then the episodic-memory rewards, which also writes the step into the
   memories (memrl.memory);
3. group-relative advantages and the clipped GRPO loss with the KL penalty (memrl.grpo);
4. one AdamW step, then copy the new weights into the generation engine.

The equations, with their config keys: docs/method.md. Left to ``memrl train``: Ray actors,
several rollout workers and learners, DeepSpeed, asynchronous rollouts, checkpoints and resume,
evaluation, metrics files.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from transformers import get_cosine_schedule_with_warmup

from memrl.config import load_config
from memrl.grpo import (
    group_advantages,
    grpo_loss,
    keep_mask_for_groups,
    loss_normaliser,
    token_logprobs,
    zero_variance_groups,
)
from memrl.learner.batching import policy_inputs, take_rows
from memrl.learner.policy import adamw_param_groups, disable_dropout
from memrl.learner.stats import token_weighted_mean
from memrl.memory import MemoryRewarder
from memrl.model import load_policy
from memrl.prompts import record_prompt
from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import score_step
from memrl.rollout import SamplingSettings, make_engine
from memrl.tasks import build_task
from memrl.train.data_stream import PromptStream
from memrl.train.setup import (
    build_reward_plan,
    learner_settings,
    memory_settings,
    prepare_model,
)
from memrl.types import RolloutBatch
from memrl.weights import pack_state_dict


def completion_logprobs(model: torch.nn.Module, batch: RolloutBatch, rows: slice,
                        temperature: float) -> torch.Tensor:
    """[rows, L] log-probs of the sampled completion tokens under ``model``, as the sampler's."""
    input_ids, attention_mask, position_ids = policy_inputs(
        batch.prompt_ids[rows], batch.prompt_mask[rows], batch.completion_ids[rows],
        batch.completion_mask[rows])
    device = next(model.parameters()).device
    length = batch.completion_ids.shape[1]
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                   position_ids=position_ids.to(device), logits_to_keep=length + 1,
                   use_cache=False).logits[:, :-1]  # position P − 1 predicts completion token 0
    return token_logprobs(logits, batch.completion_ids[rows].to(device), temperature)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Train for ``trainer.max_steps`` steps; print and return each step's numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. method=r1")
    parser.add_argument("--config", default=None, help="YAML experiment (default: the default)")
    parser.add_argument("--steps", type=int, default=None, help="sets trainer.max_steps")
    parser.add_argument("--save", default=None, help="write the trained policy to this folder")
    args = parser.parse_args(argv)
    steps = [] if args.steps is None else [f"trainer.max_steps={args.steps}"]
    cfg = load_config(args.config, [*args.overrides, *steps])
    g = cfg.grpo

    # ---- set-up: task and prompts, rewards, memory, engine, policy, reference, optimiser.
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    prompts = PromptStream(task.dataset("train"), seed=cfg.seed)
    plan = build_reward_plan(cfg, task)  # which rewards the method uses, weights wᵢ, λ_s, λ_e
    composer = RewardComposer(plan.specs)
    memory = MemoryRewarder(memory_settings(cfg)) if cfg.uses_memory else None
    model_path = prepare_model(cfg, task)  # builds (once, cached) the offline tiny model
    engine = make_engine(cfg.rollout.engine, model_path, dtype=cfg.model.dtype, seed=cfg.seed)
    sampling = SamplingSettings(temperature=g.temperature, top_p=g.top_p,
                                max_tokens=g.max_completion_length,
                                num_generations=g.num_generations)
    learn = learner_settings(cfg, model_path)  # lr, betas, schedule, clipping, loss settings
    device = engine.device
    policy, tokenizer = load_policy(model_path, dtype=torch.float32, device=device)
    disable_dropout(policy)
    reference = None
    if learn.loss.beta > 0:  # π_ref: the initial weights, frozen
        reference, _ = load_policy(model_path, dtype=torch.float32, device=device)
        reference.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(adamw_param_groups(policy, learn.weight_decay), lr=learn.lr,
                                  betas=learn.betas)
    schedule = get_cosine_schedule_with_warmup(optimizer, learn.warmup_steps, learn.max_steps)

    history: list[dict[str, float]] = []
    for step in range(cfg.trainer.max_steps):
        started = time.perf_counter()
        # 1. Sample a group of G completions per prompt (rows i·G … i·G + G − 1: prompt i).
        records = prompts.next_batch(g.prompts_per_step)
        batch = engine.generate(
            [record_prompt(task, engine.tokenizer, r, num_shots=cfg.task.num_shots, seed=cfg.seed)
             for r in records], [r.id for r in records], sampling)

        # 2. Score: R = Σ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore, one value per completion.
        scores = score_step([batch], {r.id: r for r in records}, plan, composer,
                            g.max_completion_length,
                            None if memory is None else memory.score_and_insert, step)
        rewards = torch.tensor(scores.total, dtype=torch.float32)

        # 3. Group-relative advantages A = (R − mean_group R) / (std_group R + ε).
        advantages = group_advantages(rewards, g.num_generations, scale=g.scale_rewards)
        flat = zero_variance_groups(rewards, g.num_generations)  # equal rewards: A = 0
        if g.filter_zero_variance and not flat.all():  # they teach nothing: drop them
            keep = keep_mask_for_groups(~flat, g.num_generations)
            batch, advantages = take_rows(batch, keep), advantages[keep]

        # 4. GRPO loss over micro-batches, normalised over the whole step, then one step.
        mask = batch.completion_mask
        n = batch.num_completions
        normaliser = loss_normaliser(learn.loss, global_tokens=int(mask.sum()), global_sequences=n)
        policy.train()
        micro = []
        for start in range(0, n, learn.micro_batch_size):
            rows = slice(start, start + learn.micro_batch_size)
            logp = completion_logprobs(policy, batch, rows, learn.temperature)
            ref_logp = None
            if reference is not None:
                with torch.no_grad():
                    ref_logp = completion_logprobs(reference, batch, rows, learn.temperature)
            # One update per batch: π_old = π_θ, so the ratio is 1 and its gradient ∇log π_θ.
            loss, stats = grpo_loss(logp, logp.detach(), advantages[rows].to(device),
                                    mask[rows].to(device), learn.loss, ref_logp=ref_logp,
                                    normaliser=normaliser)
            loss.backward()
            micro.append(stats)
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), learn.max_grad_norm)
        lr = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        engine.load_weights(pack_state_dict(policy.state_dict(), version=step + 1))

        tokens = [s["num_tokens"] for s in micro]
        seconds = time.perf_counter() - started
        row = {"step": step + 1, "reward/total/mean": float(scores.total.mean()),
               **{f"reward/{k}/mean": float(v.mean()) for k, v in scores.components.items()},
               "accuracy": float(scores.correct.mean()),
               "completion/length/mean": float(scores.lengths.mean()),
               "grpo/zero_variance_groups_frac": float(flat.float().mean()),
               "train/loss": sum(s["loss"] for s in micro),
               "train/kl": token_weighted_mean(micro, tokens, "kl"),
               "train/grad_norm": float(grad_norm), "train/lr": lr,
               "weights/sampled_with": batch.weight_version, "time/step": seconds}
        if memory is not None:
            row.update({f"memory/{k}": v for k, v in memory.metrics().items()})
        history.append(row)
        print(f"step {step + 1}/{cfg.trainer.max_steps}  reward {row['reward/total/mean']:.3f}  "
              f"accuracy {row['accuracy']:.3f}  loss {row['train/loss']:+.4f}  "
              f"kl {row['train/kl']:.5f}  length {row['completion/length/mean']:.1f}  "
              f"({row['time/step']:.1f} s)", flush=True)
        if not math.isfinite(row["train/loss"]):
            raise RuntimeError(f"step {step + 1}: loss {row['train/loss']}; lower trainer.lr")

    if args.save is not None:
        policy.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        print(f"policy saved to {args.save}")
    return history


if __name__ == "__main__":
    main()
