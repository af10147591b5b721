"""Experiment configuration: YAML files validated into typed objects, with dotted overrides.

Every experiment is one YAML file (see ``configs/``); any key can be overridden on the command
line as ``dotted.key=value`` (the value is parsed as YAML, so ``3``, ``0.5``, ``true`` and
``[1, 2]`` have their natural types). Unknown keys, wrong types and impossible values are
rejected before anything starts, with the key path, the value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memrl.errors import InputError
from memrl.official import OFFICIAL_EXPLICIT, apply_official, flat_keys
from memrl.task_names import import_task_class

# Rewards each method adds to the task's rule rewards (spec: R1 = rule rewards, Cosine = +
# length reward, Memory-R = + exploit, Memory-R+ = + exploit + explore); memoryr+cosine is the
# official script's combination of Memory-R+ with the cosine length reward. The controls:
# explore (Memory-R+ without its exploit term) and r1+random (a random bonus matched to
# Memory-R+'s intrinsic reward, no memory: does the memory matter, or any dense bonus?).
Method = Literal["r1", "cosine", "memoryr", "memoryr+", "memoryr+cosine", "explore", "r1+random"]
METHOD_REWARDS: dict[Method, frozenset[str]] = {
    "r1": frozenset(),
    "cosine": frozenset({"cosine"}),
    "memoryr": frozenset({"exploit"}),
    "memoryr+": frozenset({"exploit", "explore"}),
    "memoryr+cosine": frozenset({"exploit", "explore", "cosine"}),
    "explore": frozenset({"explore"}),
    "r1+random": frozenset({"random"}),
}
METHODS: tuple[Method, ...] = get_args(Method)


def _configs_folder() -> Path:
    """The shipped experiment configs: memrl/configs in an installed wheel, configs/ in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"


CONFIGS_DIR = _configs_folder()
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"


class ConfigError(InputError, ValueError):
    """A configuration that cannot run. The message names the key path and the value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_of(section: type[BaseModel], key: str) -> Any:
    """The built-in default of ``section.key``: library dataclasses (learner, loss and sampling
    settings) take their defaults from here, so the config is their one source."""
    return section.model_fields[key].default


class TinyModelConfig(_Section):
    """The offline tiny model built when ``model.name_or_path`` is ``tiny``."""

    # Qwen2 (q/k/v biases, a tokenizer class that splits every digit) is the second family the
    # comparisons repeat on, so that a finding is not one architecture's artifact.
    architecture: Literal["llama", "qwen2"] = Field(
        default="llama",
        description="model class: 'llama' (LlamaForCausalLM) or 'qwen2' (Qwen2ForCausalLM)",
    )
    vocab_size: int = Field(
        default=512, ge=64,
        description="tokens of the BPE tokenizer trained on the task's text",
    )
    hidden_size: int = Field(
        default=128, ge=8,
        description="width of the model (a multiple of num_heads)",
    )
    num_layers: int = Field(default=4, ge=1, description="transformer layers")
    num_heads: int = Field(default=4, ge=1, description="attention heads")
    intermediate_size: int = Field(default=512, ge=8, description="width of the MLP")
    max_position_embeddings: int = Field(
        default=512, ge=32,
        description="longest prompt + completion in tokens",
    )
    warmstart_steps: int = Field(
        default=600, ge=0,
        description="supervised steps on worked solutions before RL (0: no warm start)",
    )
    warmstart_lr: float = Field(default=3e-3, gt=0, description="learning rate of the warm start")
    warmstart_batch_size: int = Field(default=32, ge=1, description="demonstrations per warm-start step")
    warmstart_examples: int = Field(
        default=4000, ge=1,
        description="training records turned into demonstrations",
    )
    # Share of warm-start demonstrations written as free text ending in GSM8K's "#### N" instead
    # of the <answer> tags: a base model that solves the task but follows the required format
    # only part of the time, as small pretrained models do (the format rewards and the exact
    # answer check then have something to teach).
    warmstart_free_text_fraction: float = Field(
        default=0.0, ge=0, le=1,
        description=(
            "share of demonstrations written as free text ending in '#### N' instead of "
            "the <answer> tags (the base then follows the format only part of the time)"
        ),
    )
    # A second, short stage after the warm start: fresh demonstrations of which most state the
    # answer without working ("The answer is N." inside the tags). The base keeps the
    # step-by-step skill of the first stage but by habit answers at once, mostly wrongly on
    # multi-step problems; its samples show both behaviours, the correctness reward separates
    # them, and RL can shift it to the reasoning it already has (the embedded default's design).
    habit_steps: int = Field(
        default=0, ge=0,
        description="steps of the second stage on mostly direct answers (0: no second stage)",
    )
    habit_lr: float = Field(default=1e-3, gt=0, description="learning rate of the second stage")
    habit_direct_fraction: float = Field(
        default=0.8, ge=0, le=1,
        description=(
            "share of the second stage's demonstrations that state the answer without working "
            "('The answer is N.' in the tags); the rest are worked solutions"
        ),
    )
    # The base model's own seed (initial weights, warm-start order), not the run's ``seed``:
    # like a pretrained checkpoint, one base model is shared by every training seed.
    seed: int = Field(
        default=0,
        description=(
            "the base model's seed (initial weights, warm-start order), shared by every "
            "run seed"
        ),
    )
    cache_dir: str | None = Field(
        default=None,
        description="where built tiny models are cached (None: $MEMRL_CACHE or ~/.cache/memrl)",
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.tiny.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.tiny.num_heads ({self.num_heads})"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str = Field(
        default="tiny",
        description="the policy: a hub id, a local Hugging Face folder, or 'tiny' (built offline)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="compute dtype of learner and rollout engines (the learner keeps float32 "
        "master weights); auto: bfloat16 on GPU and on a CPU with native bfloat16 matmuls "
        "(AMX or AVX512-BF16), else float32",
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description="the offline tiny model built when name_or_path is 'tiny'",
    )


class ArithConfig(_Section):
    min_steps: int = Field(default=1, ge=1, description="fewest operations per problem")
    max_steps: int = Field(default=1, ge=1, description="most operations per problem")
    max_value: int = Field(default=50, ge=2, description="largest operand (and intermediate result)")
    operations: list[Literal["+", "-", "*"]] = Field(
        default_factory=lambda: ["+", "-"],
        description="operators the problems use",
    )
    max_factor: int = Field(default=5, ge=2, description="largest operand of a multiplication")

    @model_validator(mode="after")
    def _ordered(self) -> ArithConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(
                f"task.arith.min_steps ({self.min_steps}) must be <= task.arith.max_steps "
                f"({self.max_steps})"
            )
        return self


class CountdownConfig(_Section):
    source: Literal["generated", "hub"] = Field(
        default="generated",
        description="generated: procedural problems; hub: the Countdown dataset",
    )
    min_numbers: int = Field(default=3, ge=2, description="fewest numbers given per problem")
    max_numbers: int = Field(default=4, ge=2, description="most numbers given per problem")
    max_number: int = Field(default=100, ge=2, description="largest given number")
    max_target: int = Field(default=100, ge=1, description="largest target")


class TaskConfig(_Section):
    name: str = Field(
        default="arith",
        description=(
            "the task: prompts, answers and rule rewards; a built-in name (arith, gsm8k, aimo, "
            "math500, aime24, countdown) or the import path 'package.module:Class' of a "
            "memrl.tasks.base.Task subclass"
        ),
    )
    # Data seed of the procedural tasks (arith, countdown), not the run's ``seed``: every
    # training seed sees the same problems and is evaluated on the same held-out set.
    seed: int = Field(
        default=0,
        description=(
            "data seed of the procedural tasks (arith, countdown): every run seed sees "
            "the same problems and held-out set"
        ),
    )
    num_shots: int = Field(default=0, ge=0, le=9, description="worked exemplars before the question (0-9)")
    verifier: Literal["exact", "math"] = Field(
        default="math",
        description=(
            "answer check: math (numeric, then math-verify) or exact (the paper's GSM8K "
            "string match)"
        ),
    )
    # None: the task's default (procedural tasks: 100,000 train records; datasets: every row).
    train_size: int | None = Field(
        default=None, ge=1,
        description=(
            "records in the train split (None: procedural tasks 100,000, datasets every "
            "row)"
        ),
    )
    eval_size: int | None = Field(
        default=200, ge=1,
        description="held-out records for evaluation (None: all)",
    )
    arith: ArithConfig = Field(
        default_factory=ArithConfig,
        description="the arithmetic task's generator",
    )
    countdown: CountdownConfig = Field(
        default_factory=CountdownConfig,
        description="the Countdown task's generator",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "keyword arguments of a task named by import path (built-in tasks read their own "
            "section, e.g. task.arith, and data.*)"
        ),
    )

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        import_task_class(name)  # ValueError naming the task and the valid names
        return name

    @model_validator(mode="after")
    def _options_for_path_tasks(self) -> TaskConfig:
        import inspect

        task_class = import_task_class(self.name)
        if task_class is None:
            if self.options:
                raise ValueError(
                    f"task.options is for tasks named by import path; the built-in task "
                    f"{self.name!r} takes its settings from task.* (e.g. task.arith) and data.*"
                )
            return self
        try:
            inspect.signature(task_class).bind_partial(**self.options)
        except TypeError as exc:
            raise ValueError(f"task.options {sorted(self.options)} do not fit {self.name}: {exc}") from None
        return self


class DataConfig(_Section):
    """Local files instead of the hub (air-gapped clusters)."""

    path: str | None = Field(
        default=None,
        description="local train split (JSONL or Parquet) instead of the hub",
    )
    eval_path: str | None = Field(
        default=None,
        description="local held-out split (JSONL or Parquet) instead of the hub",
    )
    question_field: str | None = Field(
        default=None,
        description="question field of those files (None: the task's own name)",
    )
    answer_field: str | None = Field(
        default=None,
        description="answer field of those files (None: the task's own name)",
    )
    id_field: str | None = Field(
        default=None,
        description="record id field of those files (None: the file's name and row number)",
    )
    plain_answers: bool = Field(
        default=False,
        description="the answer field is the bare final answer (no '#### ...' line)",
    )


class GRPOConfig(_Section):
    num_generations: int = Field(default=16, description="completions per prompt (the group size G, >= 2)")
    batch_size: int = Field(
        default=256, ge=1,
        description="completions per optimizer step (a multiple of num_generations)",
    )
    temperature: float = Field(
        default=0.9, gt=0,
        description="sampling temperature of training completions",
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling of training completions")
    max_prompt_length: int = Field(
        default=256, ge=1,
        description=(
            "prompt token budget (vLLM's context is this + max_completion_length; a "
            "longer prompt is an error naming it)"
        ),
    )
    max_completion_length: int = Field(
        default=200, ge=1,
        description="completion tokens (also the evaluation's limit)",
    )
    beta: float = Field(
        default=0.04, ge=0,
        description=(
            "KL coefficient (k3 estimator) towards the reference model; 0 loads no "
            "reference"
        ),
    )
    clip_low: float = Field(
        default=0.2, ge=0, lt=1,
        description="PPO clip range below 1 (ratio >= 1 - clip_low)",
    )
    clip_high: float = Field(
        default=0.2, ge=0,
        description="PPO clip range above 1 (ratio <= 1 + clip_high; raise it for clip-higher)",
    )
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "dr_grpo"] = Field(
        default="token_mean",
        description=(
            "token_mean: over every token of the step; seq_mean_token_mean: per sequence, "
            "then mean; dr_grpo: sum over tokens / (sequences x max_completion_length)"
        ),
    )
    scale_rewards: Literal["std", "none"] = Field(
        default="std",
        description="std: advantages divided by the group's std (GRPO); none: not (Dr. GRPO)",
    )
    filter_zero_variance: bool = Field(
        default=False,
        description="drop groups whose rewards are all equal (no learning signal)",
    )

    @model_validator(mode="after")
    def _groups(self) -> GRPOConfig:
        if self.num_generations < 2:
            raise ValueError(
                f"grpo.num_generations = {self.num_generations}: must be >= 2 "
                "(GRPO compares completions within a group)"
            )
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"grpo.batch_size = {self.batch_size} is not divisible by grpo.num_generations "
                f"= {self.num_generations}: a batch must hold whole groups"
            )
        return self

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.num_generations


class TrainerConfig(_Section):
    max_steps: int = Field(default=100, ge=1, description="optimizer steps")
    save_every_steps: int = Field(
        default=100, ge=0,
        description="checkpoint cadence in steps (0: only the final checkpoint)",
    )
    lr: float = Field(default=5e-6, gt=0, description="AdamW peak learning rate")
    adam_beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW beta1")
    adam_beta2: float = Field(default=0.99, ge=0, lt=1, description="AdamW beta2")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(
        default=0.1, ge=0, le=1,
        description="share of max_steps of linear warm-up, then cosine decay",
    )
    max_grad_norm: float = Field(default=0.1, gt=0, description="gradient clipping norm")
    eval_before_after: bool = Field(
        default=True,
        description="greedy accuracy on the held-out set before and after training",
    )
    eval_every_steps: int = Field(
        default=0, ge=0,
        description="evaluate every N steps and keep the best model in best_model/ (0: off)",
    )
    timeout_s: float = Field(default=600.0, gt=0, description="limit on any one remote call, in seconds")
    keep_last_checkpoints: int = Field(
        default=3, ge=1,
        description="checkpoints kept; older ones are deleted",
    )
    save_every_minutes: float = Field(
        default=0.0, ge=0,
        description="checkpoint cadence in minutes (0: by steps only)",
    )
    preemption_deadline_s: float = Field(
        default=90.0, gt=0,
        description=(
            "after SIGTERM, the checkpoint is written and the run exits within this many "
            "seconds"
        ),
    )
    checkpoint_uri: str | None = Field(
        default=None,
        description=(
            "where checkpoints/ lives: a path, file://, s3://... or gs://... (None: "
            "output_dir)"
        ),
    )


# The most rollout workers a run asks for, whatever the config, control.yaml or memrl scale say
# (a count the cluster cannot place is capped lower still, see memrl.cluster.capacity).
MAX_ROLLOUT_WORKERS = 1024


class RolloutConfig(_Section):
    num_workers: Annotated[int, Field(ge=1, le=MAX_ROLLOUT_WORKERS)] | Literal["auto"] = Field(
        default=2,
        description=(
            "rollout workers generating completions: a target the pool keeps up as nodes come "
            "and go; auto: as many as the usable nodes hold after the learners and memory "
            "(grows and shrinks with the cluster). At most 1024; while the job runs "
            "(control.yaml, memrl scale) a count the cluster can never place is capped at what "
            "its nodes hold"
        ),
    )
    engine: Literal["auto", "hf", "vllm"] = Field(
        default="auto",
        description="auto: vLLM when a GPU and vLLM are present, else transformers (hf)",
    )
    num_cpus_per_worker: float = Field(
        default=1.0, ge=0,
        description="CPUs each rollout worker asks Ray for",
    )
    num_gpus_per_worker: float = Field(
        default=0.0, ge=0,
        description="GPUs each rollout worker asks Ray for (fractions share a GPU)",
    )
    # Custom Ray resources each worker asks for, e.g. {rollout_node: 0.01} to land on the node
    # type that the cluster files in cluster/ label with it.
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "custom Ray resources per worker, e.g. {rollout_node: 0.01} to land on the "
            "node type cluster/ labels with it"
        ),
    )
    gpu_memory_utilization: float = Field(
        default=0.3, gt=0, le=1,
        description="vLLM's share of its GPU's memory",
    )
    # sync: generate with the newest weights (on-policy, the paper's setting). async: generate
    # step t+1 while step t trains, with weights at most max_staleness versions old.
    mode: Literal["sync", "async"] = Field(
        default="sync",
        description=(
            "sync: generate with the newest weights (on-policy, the paper's setting); "
            "async: generate step t+1 while step t trains"
        ),
    )
    max_staleness: int = Field(
        default=1, ge=1,
        description="async: weight versions a batch may lag behind the learner",
    )
    is_cap: float = Field(
        default=2.0, gt=0,
        description="async: truncation of the importance-sampling correction",
    )
    max_behaviour_logprob_gap: float = Field(
        default=0.05, ge=0,
        description=(
            "warn once, naming the step and the rollout workers, when a step's "
            "train/behaviour_logprob_gap (mean |learner − engine| log-prob per token) exceeds "
            "this: healthy runs sit near 0.015, above 0.05 the engines' weights have drifted "
            "from the learners' (a broken weight sync); memrl report marks every such step; 0: off"
        ),
    )


class LearnerConfig(_Section):
    num_learners: int = Field(
        default=1, ge=1,
        description="data-parallel DeepSpeed ranks (each gets whole prompt groups)",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(default=0, description="DeepSpeed ZeRO stage")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs each learner asks Ray for")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs each learner asks Ray for")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per learner, e.g. {learner_node: 0.01}",
    )
    micro_batch_size: int = Field(
        default=16, ge=1,
        description=(
            "completions per forward/backward (memory budget; results do not depend on "
            "it)"
        ),
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="recompute activations in the backward pass to save memory",
    )
    train_threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description=(
            "torch threads of each CPU learner during its optimiser step, and its reference "
            "pass unless the method's memory service encodes meanwhile. auto: with "
            "rollout.mode sync the node's cores shared among its learners (the rollout "
            "workers wait meanwhile), with async its num_cpus (they generate meanwhile)"
        ),
    )


class MemoryConfig(_Section):
    mode: Literal["paper", "reference"] = Field(
        default="paper",
        description=(
            "paper: the paper's definitions; reference: the official code's, switch by "
            "switch"
        ),
    )
    k: int = Field(default=1, ge=1, description="nearest stored questions retrieved per lookup")
    capacity_keys: int = Field(default=10_000, ge=1, description="questions each memory holds")
    capacity_values: int = Field(
        default=100, ge=1,
        description="responses kept per question (first in, first out)",
    )
    warmup: int = Field(default=50, ge=0, description="the explore reward is 0 for this many units")
    warmup_unit: Literal["steps", "failure_keys"] = Field(
        default="steps",
        description="unit of warmup: steps, or questions in the failure memory (failure_keys)",
    )
    anneal_rate: float = Field(
        default=1.0, gt=0, le=1,
        description="multiplies the explore reward each step after warm-up (1: no annealing)",
    )
    window: int = Field(
        default=100, ge=1,
        description="sliding window of the min-max normalisation of the intrinsic rewards",
    )
    lambda_exploit: float = Field(
        default=1.0,
        description="weight of the exploit reward in the total reward",
    )
    lambda_explore: float = Field(
        default=1.0,
        description="weight of the explore reward in the total reward",
    )
    embedder: str = Field(
        default="all-MiniLM-L6-v2",
        description=(
            "sentence-transformers model name or path (offline copy by default), or "
            "'hash' (model-free, for tests)"
        ),
    )
    embedder_backend: Literal["onnx", "torch"] = Field(
        default="onnx",
        description=(
            "onnx: the model exported once and run by onnxruntime on CPU; torch: "
            "sentence-transformers as is"
        ),
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs of each memory actor")
    num_gpus: float = Field(
        default=0.0, ge=0,
        description="GPUs of each memory actor (a fraction puts FAISS on the GPU)",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "custom Ray resources per memory actor, e.g. {memory_node: 0.01} to keep it on the "
            "on-demand nodes cluster/ labels with it"
        ),
    )
    num_shards: int = Field(
        default=1, ge=1,
        description="memory actors, each holding the questions whose text hashes to it",
    )
    value_text_chars: int = Field(
        default=400, ge=0,
        description="characters of each stored reasoning kept for memrl memory inspect",
    )


class RandomBonusConfig(_Section):
    """The random bonus of method ``r1+random`` (memrl/rewards/random_bonus.py)."""

    mean: float = Field(
        default=0.0,
        description=(
            "mean of the per-completion Gaussian bonus, every step (method r1+random; "
            "leave 0 with match_run)"
        ),
    )
    std: float = Field(
        default=0.0, ge=0,
        description=(
            "its standard deviation over a step's completions (method r1+random; leave 0 "
            "with match_run)"
        ),
    )
    match_run: str | None = Field(
        default=None,
        description=(
            "a Memory-R+ run directory (or its metrics.jsonl): step t's bonus takes that run's "
            "step-t mean and std of reward/intrinsic (λ_s·exploit + λ_e·explore per "
            "completion) instead of mean/std; it must have logged every step of this run"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> RandomBonusConfig:
        if self.match_run is not None and (self.mean != 0.0 or self.std != 0.0):
            raise ValueError(
                f"random_bonus.match_run ({self.match_run!r}) and random_bonus.mean/std "
                f"({self.mean}, {self.std}) both set: the matched run gives mean and std per "
                "step; set one or the other"
            )
        return self

    @property
    def is_set(self) -> bool:
        return self.match_run is not None or self.mean != 0.0 or self.std != 0.0


class RewardSpecConfig(_Section):
    fn: str = Field(
        description="a built-in reward name or an import path 'package.module:function'",
    )
    weight: float = Field(default=1.0, description="weight of this reward in the total reward")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments passed to the reward on every call",
    )


class LoggingConfig(_Section):
    tensorboard: bool = Field(
        default=True,
        description="write the metrics for TensorBoard under output_dir/tensorboard",
    )
    wandb_project: str | None = Field(
        default=None,
        description="log to this Weights & Biases project (None: off)",
    )
    progress_bar: bool = Field(default=True, description="show a progress bar of the steps")
    verbose: bool = Field(
        default=False,
        description=(
            "memrl train: also show what the libraries and actors print (vLLM, Ray, DeepSpeed ...) "
            "on the terminal, as Ray streams it; false: memrl's own lines only, the rest in "
            "output_dir/logs/ (`memrl train --verbose` sets it)"
        ),
    )


class RayConfig(_Section):
    address: str | None = Field(
        default=None,
        description="join this Ray cluster (None: RAY_ADDRESS, else start a local one)",
    )
    num_cpus: int | None = Field(
        default=None, ge=1,
        description="logical CPUs of a local cluster (None: the machine's)",
    )


class Config(_Section):
    method: Method = Field(
        default="memoryr+",
        description=(
            "r1: rule rewards; cosine: + cosine length reward; memoryr: + exploit; "
            "memoryr+: + exploit + explore; memoryr+cosine: all three; explore: + explore "
            "(Memory-R+ without exploit); r1+random: + a random bonus (random_bonus.*, no memory)"
        ),
    )
    official: bool = Field(
        default=False,
        description=(
            "the official code's setup in one switch (memrl/official.py lists the keys it "
            "sets)"
        ),
    )
    seed: int = Field(
        default=0,
        description=(
            "the run's seed: prompt order, sampling, learner init (data and the tiny base "
            "model have their own)"
        ),
    )
    output_dir: str = Field(
        default="runs/default",
        description="the run directory: config, metrics, checkpoints, final model",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy model")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the task and its data")
    data: DataConfig = Field(
        default_factory=DataConfig,
        description="local files instead of the hub (air-gapped clusters)",
    )
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="sampling and the GRPO loss")
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig,
        description="optimizer, schedule, evaluation and checkpoints",
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout workers")
    learner: LearnerConfig = Field(
        default_factory=LearnerConfig,
        description="learner ranks (DeepSpeed)",
    )
    memory: MemoryConfig = Field(
        default_factory=MemoryConfig,
        description="the episodic memories and their intrinsic rewards",
    )
    rewards: list[RewardSpecConfig] | None = Field(
        default=None,
        description=(
            "rewards replacing the task's rule rewards, each {fn, weight, kwargs} (None: "
            "the method's)"
        ),
    )
    random_bonus: RandomBonusConfig = Field(
        default_factory=RandomBonusConfig,
        description="the random bonus of method r1+random (other methods ignore it)",
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="loggers")
    ray: RayConfig = Field(default_factory=RayConfig, description="the Ray cluster")

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        prompts = self.grpo.prompts_per_step
        if prompts % self.learner.num_learners:
            raise ValueError(
                f"learner.num_learners = {self.learner.num_learners} does not divide the "
                f"{prompts} prompt groups per step (grpo.batch_size / grpo.num_generations): "
                "each learner must get whole groups"
            )
        gpus = self.learner.num_gpus
        if self.learner.num_learners > 1 and gpus > 0 and gpus != int(gpus):
            raise ValueError(
                f"learner.num_gpus = {gpus} with learner.num_learners = "
                f"{self.learner.num_learners}: NCCL cannot run two ranks on one GPU, and a "
                "fractional share lets Ray put two ranks on the same one; give each learner "
                "whole GPUs, or use one learner"
            )
        if self.method == "r1+random" and not self.random_bonus.is_set:
            raise ValueError(
                "method r1+random: random_bonus.mean = random_bonus.std = 0 and no "
                "random_bonus.match_run, so the bonus adds nothing; set random_bonus.mean and "
                "random_bonus.std, or random_bonus.match_run to a Memory-R+ run"
            )
        return self

    @property
    def uses_memory(self) -> bool:
        return bool({"exploit", "explore"} & METHOD_REWARDS[self.method])

    @property
    def uses_explore(self) -> bool:
        return "explore" in METHOD_REWARDS[self.method]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"override {dotted}={value!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` and parse the value as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        # Cross-field checks already name their keys; prefixing the section would repeat it.
        lines.append(f"  {msg}" if msg.startswith(path + ".") else f"  {path}: {msg}{shown}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_tree(source: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read one YAML file; a top-level ``base: other.yaml`` (relative to it) is merged under it."""
    if not source.is_file():
        raise ConfigError(f"config file not found: {source}")
    if source.resolve() in seen:
        raise ConfigError(f"config file {source}: 'base' chain loops back to itself")
    raw = source.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"config file {source}, line {line}: not UTF-8 text "
                          f"(byte {raw[exc.start:exc.start + 1]!r}); re-save it as UTF-8") from None
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {source}: top level must be a mapping of keys")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"config file {source}: base must be a file name (got {base!r})")
    parent = _read_tree(source.parent / base, seen + (source.resolve(),))
    merged = _merge(parent, tree)
    if tree.get("official") is True or OFFICIAL_EXPLICIT in parent:
        # Keys of the file that turns `official` on and of files built on it win over the
        # official values (applied in load_config, once the method is known).
        merged[OFFICIAL_EXPLICIT] = sorted(set(parent.get(OFFICIAL_EXPLICIT, [])) | flat_keys(tree))
    return merged


def _resolve_config_path(path: str | Path | None) -> Path:
    """A file as given, else a shipped config of that name (``memrl train gsm8k_base.yaml``)."""
    if path is None:
        return DEFAULT_CONFIG
    given = Path(path)
    shipped = CONFIGS_DIR / given.name
    if not given.is_file() and given.parent in (Path("."), Path("configs")) and shipped.is_file():
        return shipped
    return given


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML experiment (``configs/default.yaml`` when ``path`` is None) and apply overrides.

    A path that is not a file, written as a bare name or ``configs/NAME``, means the shipped
    config of that name, so an installed memrl runs its experiments from any directory.

    A file may start from another with a top-level ``base: other.yaml`` key (path relative to
    the file); its keys are merged over the base's, section by section.

    Raises:
        ConfigError: the file is missing or not YAML, or a key/value is invalid; the message
            names the file or key path and the offending value.
    """
    source = _resolve_config_path(path)
    tree = _read_tree(source, seen=())
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        _set_dotted(tree, key, value)
    explicit = set(tree.pop(OFFICIAL_EXPLICIT, []))
    if tree.get("official") is True:
        # Official values replace what the files below the one that turned it on say;
        # that file, files built on it and the overrides win (memrl/official.py).
        if ("official", True) in parsed:
            explicit = set()
        apply_official(tree, explicit | {key for key, _ in parsed})
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        where = str(source) + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(_format_validation_error(exc, where)) from None


def config_to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
