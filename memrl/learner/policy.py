"""The policy trainer of one data-parallel rank: a Hugging Face causal LM under DeepSpeed.

One :meth:`PolicyTrainer.optimizer_step` is one optimiser step over the rank's shard of a
RolloutBatch. The loss is ``memrl.grpo.loss.grpo_loss``; its normaliser is the *global* count
of the step (all micro-batches on all ranks), so the update is the gradient of the mean over
the whole batch however it is split. DeepSpeed averages gradients over the ``W``
data-parallel ranks; ``loss_normaliser(..., world_size=W)`` multiplies that average back into
a sum.

Gradient accumulation is driven by hand: the number of micro-batches follows the batch (groups
may be filtered), so the DeepSpeed config keeps ``gradient_accumulation_steps = 1`` (no loss
division) and :meth:`optimizer_step` marks the last micro-batch as the accumulation boundary
before its backward, then calls ``engine.step()`` once. Every rank runs the same number of
forward/backward passes, since ZeRO's collectives happen per pass; a rank with fewer rows runs
zero-weighted passes.

Schedule, as in the paper's TRL runs: AdamW (weight decay on matrices only, as the Hugging Face
Trainer does), linear warm-up over ``ceil(warmup_ratio · max_steps)`` steps from 0, then cosine
decay to 0 at ``max_steps``; one scheduler step per optimiser step; DeepSpeed clips the global
gradient norm to ``max_grad_norm``. Dropout is switched off, so the log-probs of the update
pass equal those computed before it (ratio 1 on the first update of a batch).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from memrl.config import Config, GRPOConfig, LearnerConfig, TrainerConfig, default_of
from memrl.errors import UnexplainedFault
from memrl.grpo.loss import (
    LossSettings,
    grpo_loss,
    importance_weights,
    loss_normaliser,
    token_logprobs,
)
from memrl.learner.batching import micro_batch_bounds, micro_batches_needed, policy_inputs
from memrl.learner.distributed import detect_device, init_distributed, load_deepspeed
from memrl.learner.packing import pack_completions, packable_attention, packed_completion_logprobs
from memrl.learner.stats import token_weighted_mean
from memrl.learner.threads import TrainThreads
from memrl.model.loading import load_policy, loading_stage
from memrl.model.precision import auto_dtype
from memrl.types import RolloutBatch
from memrl.weights import PackedWeights, WeightPacker

CHECKPOINT_TAG = "learner"
_TOKEN_MEAN_STATS = ("kl", "clip_frac", "ratio_mean", "is_weight_mean")


@dataclass(frozen=True)
class LearnerSettings:
    """Everything one learner rank needs to build its trainer.

    ``max_steps`` sets the length of the learning-rate schedule (optimiser steps).
    ``micro_batch_size`` is completions per forward/backward pass (a memory budget; the result
    does not depend on it). ``temperature`` is the rollout's sampling temperature: logits are
    divided by it before the log-softmax, so learner and sampler log-probs are comparable.
    ``bf16`` None means ``memrl.model.precision.auto_dtype``'s choice. ``zero_stage`` is DeepSpeed ZeRO 0–3.
    ``collective_timeout_s`` bounds every collective (a dead peer raises instead of hanging).
    ``pack_sequences`` runs forwards in the packed layout of ``memrl.learner.packing`` (no
    padding, one prompt per group) where the model allows it; the numbers do not depend on it.
    ``train_threads`` and ``rollout_overlaps`` (the rollout workers generate while the learner
    trains: ``rollout.mode`` async) set the threads of a CPU learner's optimiser step
    (``memrl.learner.threads``); its reference pass takes as many unless
    ``scoring_overlaps_reference`` (the memory service encodes while it runs).
    """

    model_path: str
    max_steps: int
    lr: float = default_of(TrainerConfig, "lr")
    betas: tuple[float, float] = (default_of(TrainerConfig, "adam_beta1"), default_of(TrainerConfig, "adam_beta2"))
    weight_decay: float = default_of(TrainerConfig, "weight_decay")
    warmup_ratio: float = default_of(TrainerConfig, "warmup_ratio")
    max_grad_norm: float = default_of(TrainerConfig, "max_grad_norm")
    zero_stage: int = default_of(LearnerConfig, "zero_stage")
    bf16: bool | None = None
    micro_batch_size: int = default_of(LearnerConfig, "micro_batch_size")
    loss: LossSettings = field(default_factory=LossSettings)
    temperature: float = default_of(GRPOConfig, "temperature")
    gradient_checkpointing: bool = False
    pack_sequences: bool = True
    seed: int = default_of(Config, "seed")
    collective_timeout_s: float = default_of(TrainerConfig, "timeout_s")
    train_threads: TrainThreads = "auto"
    rollout_overlaps: bool = False
    scoring_overlaps_reference: bool = False

    def __post_init__(self) -> None:
        checks = {
            "max_steps": self.max_steps >= 1,
            "lr": self.lr > 0,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "weight_decay": self.weight_decay >= 0,
            "warmup_ratio": 0 <= self.warmup_ratio <= 1,
            "max_grad_norm": self.max_grad_norm > 0,
            "zero_stage": self.zero_stage in (0, 1, 2, 3),
            "micro_batch_size": self.micro_batch_size >= 1,
            "temperature": self.temperature > 0,
            "collective_timeout_s": self.collective_timeout_s > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"LearnerSettings.{key} = {getattr(self, key)!r} is out of range")

    @property
    def warmup_steps(self) -> int:
        """Linear warm-up length in optimiser steps (rounded up, as the HF Trainer does)."""
        return math.ceil(self.warmup_ratio * self.max_steps)


def deepspeed_config(settings: LearnerSettings, *, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for ``settings`` (see the module docstring for accumulation).

    Under bf16 with ZeRO gradients accumulate over the micro-batches in float32
    (``data_types.grad_accum_dtype``; DeepSpeed's default is the model's bf16, whose 8
    mantissa bits lose the small terms of a 16-micro-batch sum). DeepSpeed has no float32
    accumulation for bf16 without ZeRO (stage 0 raises NotImplementedError), so stage 0 keeps
    bf16 gradients.
    """
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": settings.max_grad_norm,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,  # memrl reports its own metrics
        "wall_clock_breakdown": False,
    }
    if bf16 and settings.zero_stage > 0:
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear and embedding weights), none on norms and biases.

    This matches the Hugging Face Trainer that the paper's TRL runs used.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0 (``nn.Dropout`` and attention dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            # torch types Module.__setattr__'s value as Tensor | Module; plain attributes pass too
            module.attention_dropout = 0.0  # pyright: ignore[reportArgumentType]


def _check_batch(batch: RolloutBatch) -> None:
    n = batch.num_completions
    if n == 0:
        raise ValueError("the learner got an empty RolloutBatch (0 completions)")
    if batch.prompt_ids.shape[1] < 1 or batch.completion_ids.shape[1] < 1:
        raise ValueError(
            f"prompt_ids {tuple(batch.prompt_ids.shape)} and completion_ids "
            f"{tuple(batch.completion_ids.shape)} need at least one column each"
        )
    for name in ("prompt_ids", "prompt_mask"):
        if getattr(batch, name).shape != batch.prompt_ids.shape:
            raise ValueError(f"RolloutBatch.{name} has shape {tuple(getattr(batch, name).shape)}")
    for name in ("completion_mask", "behaviour_logprobs", "token_versions"):
        if getattr(batch, name).shape != batch.completion_ids.shape:
            raise ValueError(
                f"RolloutBatch.{name} has shape {tuple(getattr(batch, name).shape)}, "
                f"expected {tuple(batch.completion_ids.shape)} like completion_ids"
            )


class UnsafeCheckpointError(UnexplainedFault, ValueError):
    """A checkpoint file holds objects that a weights-only unpickler refuses."""


def check_plain_pickles(directory: Path) -> None:
    """Raise :class:`UnsafeCheckpointError` naming the first ``*.pt`` file under ``directory``
    that ``torch.load(weights_only=True)`` refuses (anything beyond tensors, containers and
    plain values, e.g. a global that unpickling would import or call)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # DeepSpeed's own plain-data classes in its ZeRO optimizer states (fields only, no code
    # runs when they are rebuilt); anything else stays refused.
    deepspeed_data = [LossScaler, ZeroStageEnum, fragment_address]
    for path in sorted(directory.rglob("*.pt")):
        try:
            with torch.serialization.safe_globals(deepspeed_data):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for refused globals, others for corruption
            raise UnsafeCheckpointError(
                f"{path}: not loadable as plain tensors and values ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); refusing to restore from it"
            ) from exc


class PolicyTrainer:
    """DeepSpeed-wrapped policy (and optional frozen reference) of one data-parallel rank.

    The process must have its rank environment set (``memrl.learner.distributed.set_rank_env``);
    the constructor joins the process group, saying each stage to ``progress`` as it begins.
    With ``loss.beta > 0`` a second, frozen copy of the initial model is kept as the KL
    reference (a plain module on the same device, not partitioned by ZeRO).

    ``weight_version`` is the version under which the current weights were published (0 for
    the initial weights, which rollout workers load from ``model_path`` too), or None once an
    update has changed them since. Tokens sampled under any other version are stale.
    """

    def __init__(self, settings: LearnerSettings, *, device: str | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        say = progress or (lambda stage: None)  # what start-up is doing now (an actor's announcement)
        self.settings = settings
        self.device = device or detect_device()
        say(f"joining the process group (world size {os.environ.get('WORLD_SIZE', '?')}, rendezvous "
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')})")
        init_distributed(self.device, settings.collective_timeout_s)
        deepspeed = load_deepspeed(self.device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.bf16 = (auto_dtype(self.device != "cuda") == "bfloat16" if settings.bf16 is None
                     else settings.bf16)
        torch.manual_seed(settings.seed)

        # fp32 weights: with bf16 DeepSpeed casts the module and keeps fp32 master weights.
        say(loading_stage(settings.model_path))
        model, self.tokenizer = load_policy(settings.model_path, dtype=torch.float32)
        disable_dropout(model)
        if settings.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        optimizer = torch.optim.AdamW(
            adamw_param_groups(model, settings.weight_decay), lr=settings.lr, betas=settings.betas
        )
        say("setting up DeepSpeed")
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=deepspeed_config(settings, bf16=self.bf16),
            lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(
                opt, num_warmup_steps=settings.warmup_steps, num_training_steps=settings.max_steps
            ),
        )
        if settings.loss.beta > 0:
            say("loading the reference model")
        self.reference = self._load_reference() if settings.loss.beta > 0 else None
        self.weight_version: int | None = 0
        # [N] float32 of the last optimizer_step's rows: Σ |learner − sampler| log-prob over each
        # completion's real tokens (the prompt ledger and the drift alarm read it per group).
        self.row_gaps = torch.zeros(0)
        self._packer = WeightPacker()

    # ----------------------------------------------------------------------------- forward

    def _load_reference(self) -> PreTrainedModel:
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        reference, _ = load_policy(self.settings.model_path, dtype=dtype, device=self.engine.device)
        reference.eval().requires_grad_(False)
        return reference

    def _passes(self, num_rows: int, count: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, stop, real)`` for ``count`` passes; an empty pass reruns row 0, unweighted."""
        for start, stop in micro_batch_bounds(num_rows, count):
            yield (start, stop, True) if stop > start else (0, 1, False)

    def _completion_logprobs(
        self, model: torch.nn.Module, batch: RolloutBatch, start: int, stop: int
    ) -> torch.Tensor:
        """[stop − start, L] float32 log-probs of the completion tokens, on the model's device
        (0 at padding in the packed layout; see :meth:`_padded_logprobs` for the other)."""
        device = self.engine.device
        rows = slice(start, stop)
        net = self.engine.module if model is self.engine else model
        attention = packable_attention(net) if self.settings.pack_sequences else None
        if attention is not None:
            packed = pack_completions(
                batch.prompt_ids[rows], batch.prompt_mask[rows],
                batch.completion_ids[rows], batch.completion_mask[rows],
                pad_id=self.tokenizer.pad_token_id or 0,
            )
            shape = (stop - start, batch.completion_ids.shape[1])
            return packed_completion_logprobs(
                model, packed, shape, self.settings.temperature, device,
                attn_implementation=attention,
                dtype=next(net.parameters()).dtype,
            )
        return self._padded_logprobs(model, batch, rows)

    def _padded_logprobs(
        self, model: torch.nn.Module, batch: RolloutBatch, rows: slice
    ) -> torch.Tensor:
        """The padded layout: one row per completion, logits from the first completion
        position on (junk at padding, which every consumer masks)."""
        device = self.engine.device
        input_ids, attention_mask, position_ids = policy_inputs(
            batch.prompt_ids[rows],
            batch.prompt_mask[rows],
            batch.completion_ids[rows],
            batch.completion_mask[rows],
        )
        length = batch.completion_ids.shape[1]
        output = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=length + 1,  # position P − 1 predicts the first completion token
            use_cache=False,
        )
        logits = output.logits[:, :-1]
        return token_logprobs(
            logits, batch.completion_ids[rows].to(device), self.settings.temperature
        )

    def _agreed_micro_batches(self, num_rows: int) -> int:
        """The largest micro-batch count any rank needs (every rank must run as many passes)."""
        local = micro_batches_needed(num_rows, self.settings.micro_batch_size)
        return int(self._all_reduce([local], dist.ReduceOp.MAX)[0])

    def _all_reduce(self, values: list[int], op: dist.ReduceOp.RedOpType) -> list[int]:
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.int64, device=self.engine.device)
        dist.all_reduce(tensor, op=op)
        return [int(v) for v in tensor.tolist()]

    @torch.no_grad()
    def _logprobs_with(
        self, model: torch.nn.Module, batch: RolloutBatch, passes: int
    ) -> torch.Tensor:
        n, length = batch.completion_ids.shape
        out = torch.zeros(n, length, dtype=torch.float32)
        for start, stop, real in self._passes(n, passes):
            logp = self._completion_logprobs(model, batch, start, stop)
            if real:
                out[start:stop] = logp.float().cpu()
        return out * batch.completion_mask.to(out.dtype)

    def logprobs(
        self, batch: RolloutBatch, *, num_micro_batches: int | None = None
    ) -> torch.Tensor:
        """[N, L] float32 CPU log-probs of the completions under the current policy (0 at padding).

        Collective under ZeRO-3 (parameters are gathered per forward): every rank must call it
        with the same ``num_micro_batches`` (default: agreed across ranks by an all-reduce).
        """
        _check_batch(batch)
        passes = num_micro_batches or self._agreed_micro_batches(batch.num_completions)
        self.engine.eval()
        return self._logprobs_with(self.engine, batch, passes)

    def ref_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        """[N, L] float32 CPU log-probs under the frozen reference model (0 at padding)."""
        if self.reference is None:
            raise RuntimeError(
                "ref_logprobs needs a reference model, which is only loaded when loss.beta > 0"
            )
        _check_batch(batch)
        passes = micro_batches_needed(batch.num_completions, self.settings.micro_batch_size)
        return self._logprobs_with(self.reference, batch, passes)

    # ------------------------------------------------------------------------------ update

    def _stale_tokens(self, batch: RolloutBatch) -> tuple[bool, float]:
        """Whether the step applies IS weights (some real token was sampled by other weights
        and ``is_cap`` is set), and the fraction of stale real tokens."""
        real = batch.completion_mask.bool()
        current = -1 if self.weight_version is None else self.weight_version
        stale = real & (batch.token_versions != current)
        stale_frac = float(stale.sum()) / max(int(real.sum()), 1)
        return self.settings.loss.is_cap is not None and bool(stale.any()), stale_frac

    def _plain_grad_norm(self) -> float | None:
        """Norm of the (already averaged) gradients when DeepSpeed's optimizer reports none.

        Only plain fp32 without ZeRO keeps full gradients on the parameters and a torch
        optimizer that does not record the norm; the ZeRO and bf16 optimizers record it.
        """
        if self.settings.zero_stage != 0 or self.bf16:
            return None
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    def optimizer_step(
        self,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        *,
        ref_logp: torch.Tensor | None = None,
        global_tokens: int | None = None,
        global_seqs: int | None = None,
        num_micro_batches: int | None = None,
    ) -> dict[str, float]:
        """One optimiser step on this rank's shard ``batch`` with ``advantages`` [N].

        π_old is the policy at step start: with one update per batch and dropout off, its
        log-probs are the update pass's own, so each micro-batch takes its detached log-probs as
        old and no separate pass runs.

        ``global_tokens``/``global_seqs`` are the real completion tokens and completions of the
        whole step on all ranks (default: summed across ranks by an all-reduce);
        ``num_micro_batches`` must be equal on every rank (default: agreed by an all-reduce).
        ``ref_logp`` [N, L] defaults to this trainer's reference model when ``beta > 0``.

        Returns floats: ``loss`` (this rank's share of the step's loss; shares sum to it),
        ``kl``, ``clip_frac``, ``ratio_mean`` (and ``is_weight_mean`` when IS weights were
        applied), token means over this rank; ``tokens`` (completion), ``sequence_tokens``
        (prompt + completion, no padding), ``sequences`` of this rank;
        ``grad_norm`` (global, before clipping), ``lr`` (used by this step), ``step`` (optimiser
        steps taken so far); ``stale_token_frac`` and ``behaviour_logprob_gap`` (mean
        |learner − sampler| log-prob over real tokens, the train/inference mismatch);
        ``ref_logprob_s``, ``update_s``, ``step_time_s`` in seconds.
        """
        started = time.perf_counter()
        _check_batch(batch)
        n = batch.num_completions
        if advantages.shape != (n,):
            raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected ({n},)")
        if ref_logp is not None and ref_logp.shape != batch.completion_ids.shape:
            raise ValueError(
                f"ref_logp has shape {tuple(ref_logp.shape)}, expected "
                f"{tuple(batch.completion_ids.shape)}"
            )
        mask = batch.completion_mask
        local_tokens = int(mask.sum())
        if global_tokens is None or global_seqs is None:
            global_tokens, global_seqs = self._all_reduce([local_tokens, n], dist.ReduceOp.SUM)
        passes = num_micro_batches or self._agreed_micro_batches(n)

        prepared = time.perf_counter()
        if ref_logp is None and self.reference is not None:
            ref_logp = self.ref_logprobs(batch)
        ref_done = time.perf_counter()
        weighted, stale_frac = self._stale_tokens(batch)
        normaliser = loss_normaliser(
            self.settings.loss,
            global_tokens=global_tokens,
            global_sequences=global_seqs,
            world_size=self.world_size,
        )

        lr = float(self.scheduler.get_last_lr()[0])
        steps_before = self.engine.global_steps
        device = self.engine.device
        self.engine.train()
        micro_stats: list[dict[str, float]] = []
        gap_sum = 0.0
        row_gaps = torch.zeros(n, dtype=torch.float32)
        for i, (start, stop, real) in enumerate(self._passes(n, passes)):
            self.engine.set_gradient_accumulation_boundary(i == passes - 1)
            rows = slice(start, stop)
            row_mask = mask[rows].to(device)
            logp = self._completion_logprobs(self.engine, batch, start, stop)
            old = logp.detach()
            behaviour = batch.behaviour_logprobs[rows].to(device)
            is_weights = (
                importance_weights(old, behaviour, row_mask, self.settings.loss.is_cap)
                if weighted and self.settings.loss.is_cap is not None else None
            )
            loss, stats = grpo_loss(
                logp,
                old,
                advantages[rows].to(device),
                row_mask,
                self.settings.loss,
                ref_logp=None if ref_logp is None else ref_logp[rows].to(device),
                is_weights=is_weights,
                normaliser=normaliser,
            )
            if real:
                micro_stats.append(stats)
                gaps = (old - behaviour).abs().masked_fill(row_mask == 0, 0.0).sum(dim=1)
                row_gaps[rows] = gaps.float().cpu()
                gap_sum += float(gaps.sum())
            else:
                loss = loss * 0.0  # keeps the collective pattern, adds no gradient
            self.engine.backward(loss)
        plain_norm = self._plain_grad_norm()
        self.engine.step()
        if self.engine.global_steps != steps_before + 1:
            raise RuntimeError(
                f"rank {self.rank}: engine.step() advanced DeepSpeed from step {steps_before} to "
                f"{self.engine.global_steps}; expected exactly one optimiser step"
            )
        reported = self.engine.get_global_grad_norm()
        grad_norm = float(reported) if reported is not None else plain_norm
        self.weight_version = None
        self.row_gaps = row_gaps
        done = time.perf_counter()

        weights = [s["num_tokens"] for s in micro_stats]
        result = {
            "loss": sum(s["loss"] for s in micro_stats) / self.world_size,
            "tokens": float(local_tokens),
            "sequence_tokens": float(batch.prompt_mask.sum() + local_tokens),
            "sequences": float(n),
            "grad_norm": float("nan") if grad_norm is None else grad_norm,
            "lr": lr,
            "step": float(self.engine.global_steps),
            "stale_token_frac": stale_frac,
            "behaviour_logprob_gap": gap_sum / max(local_tokens, 1),
            "ref_logprob_s": ref_done - prepared,
            "update_s": done - ref_done,
            "step_time_s": done - started,
        }
        for key in _TOKEN_MEAN_STATS:
            if any(key in s for s in micro_stats):
                result[key] = token_weighted_mean(micro_stats, weights, key)
        return result

    @property
    def steps(self) -> int:
        """Optimiser steps taken (restored by :meth:`load_state`)."""
        return int(self.engine.global_steps)

    # ---------------------------------------------------------------------- weights, disk

    @contextmanager
    def _full_state(self) -> Iterator[dict[str, torch.Tensor]]:
        """The module's full state dict, on its device and in its dtype, while it is gathered
        (ZeRO-3 partitions are gathered for the block: a collective, entered on every rank)."""
        module = self.engine.module
        deepspeed = load_deepspeed(self.device)
        with deepspeed.zero.GatheredParameters(
            list(module.parameters()), modifier_rank=None, enabled=self.settings.zero_stage == 3
        ):
            yield module.state_dict()

    def state_dict_for_publish(self) -> dict[str, torch.Tensor]:
        """Full model weights on CPU in the model's dtype (bf16 under bf16 training).

        Under ZeRO-3 the partitions are gathered first: a collective, call it on every rank.
        Tied tensors (input and output embeddings) stay one tensor under both names.
        """
        copies: dict[tuple, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        with self._full_state() as state:
            for name, tensor in state.items():
                key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
                if key not in copies:
                    copies[key] = tensor.detach().to("cpu", copy=True)
                out[name] = copies[key]
        return out

    def publish(self, version: int) -> PackedWeights | None:
        """Pack the current weights as ``version`` (rank 0; other ranks return None) and record
        that they carry it (:meth:`mark_published`).

        Rank 0 packs straight from the parameters into buffers it reuses (``WeightPacker``: one
        copy, no fresh memory); the result is valid until the next publish, so hand it on first
        (an actor method's return value is serialised as the method returns). Under ZeRO-3
        every rank must call it: the gather is collective.
        """
        packed = None
        if self.rank == 0 or self.settings.zero_stage == 3:
            with self._full_state() as state:
                if self.rank == 0:
                    packed = self._packer.pack(state, version)
        self.mark_published(version)
        return packed

    def mark_published(self, version: int) -> None:
        """Record that the current weights were published as ``version``."""
        self.weight_version = int(version)

    def save_hf(self, directory: str | Path) -> Path | None:
        """Write the model (safetensors) and tokenizer as a Hugging Face folder.

        Every rank must call it (the ZeRO-3 gather is collective); rank 0 writes and returns
        the folder, the others return None.
        """
        state = self.state_dict_for_publish()
        if self.rank != 0:
            return None
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.engine.module.save_pretrained(folder, state_dict=state)
        self.tokenizer.save_pretrained(folder)
        return folder

    def save_state(self, directory: str | Path) -> None:
        """Save weights, optimizer, LR scheduler and step counters for resuming.

        DeepSpeed's checkpoint format: ``directory/learner/`` holds ``torch.save`` pickles
        (``mp_rank_00_model_states.pt`` with module, scheduler and counters; one
        ``*_optim_states.pt`` per ZeRO partition) and ``directory/latest`` names the tag.
        Every rank must call it and ``directory`` must be storage that every rank can reach.
        Resuming needs the same world size and ZeRO stage.
        """
        self.engine.save_checkpoint(
            str(directory), tag=CHECKPOINT_TAG, client_state={"weight_version": self.weight_version}
        )

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (every rank calls it).

        DeepSpeed reads its files with ``torch.load(weights_only=False)``; every file is first
        read with ``weights_only=True`` (tensors, containers and plain values only), so a file
        that would run code when unpickled is refused before DeepSpeed opens it.
        """
        if not (Path(directory) / CHECKPOINT_TAG).is_dir():
            raise FileNotFoundError(
                f"no learner checkpoint in {directory} (expected {directory}/{CHECKPOINT_TAG}/)"
            )
        check_plain_pickles(Path(directory) / CHECKPOINT_TAG)
        _, client_state = self.engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG)
        self.weight_version = client_state.get("weight_version")
