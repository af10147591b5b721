"""Experiment configuration: YAML files validated into typed objects, with dotted overrides.

Every experiment is one YAML file (see ``configs/``); any key can be overridden on the command
line as ``dotted.key=value`` (the value is parsed as YAML, so ``3``, ``0.5``, ``true`` and
``[1, 2]`` have their natural types). Unknown keys, wrong types and impossible values are
rejected before anything starts, with the key path, the value and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

METHODS = ("r1", "cosine", "memoryr", "memoryr+")


def _configs_folder() -> Path:
    """The shipped experiment configs: memrl/configs in an installed wheel, configs/ in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"


CONFIGS_DIR = _configs_folder()
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration that cannot run. The message names the key path and the value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(_Section):
    """The offline tiny Llama model built when ``model.name_or_path`` is ``tiny``."""

    vocab_size: int = Field(512, ge=64)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(512, ge=32)
    warmstart_steps: int = Field(600, ge=0)
    warmstart_lr: float = Field(3e-3, gt=0)
    warmstart_batch_size: int = Field(32, ge=1)
    warmstart_examples: int = Field(4000, ge=1)
    # Share of warm-start demonstrations written as free text ending in GSM8K's "#### N" instead
    # of the <answer> tags: a base model that solves the task but follows the required format
    # only part of the time, as small pretrained models do (the format rewards and the exact
    # answer check then have something to teach).
    warmstart_free_text_fraction: float = Field(0.0, ge=0, le=1)
    # The base model's own seed (initial weights, warm-start order), not the run's ``seed``:
    # like a pretrained checkpoint, one base model is shared by every training seed.
    seed: int = 0
    cache_dir: Optional[str] = None  # default: $MEMRL_CACHE or ~/.cache/memrl

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.tiny.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.tiny.num_heads ({self.num_heads})"
            )
        return self


class ModelConfig(_Section):
    name_or_path: str = "tiny"  # a hub id, a local HF folder, or "tiny" (built offline)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)


class ArithConfig(_Section):
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(1, ge=1)
    max_value: int = Field(50, ge=2)
    operations: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-"])
    max_factor: int = Field(5, ge=2)

    @model_validator(mode="after")
    def _ordered(self) -> "ArithConfig":
        if self.min_steps > self.max_steps:
            raise ValueError(
                f"task.arith.min_steps ({self.min_steps}) must be <= task.arith.max_steps "
                f"({self.max_steps})"
            )
        return self


class CountdownConfig(_Section):
    source: Literal["generated", "hub"] = "generated"
    min_numbers: int = Field(3, ge=2)
    max_numbers: int = Field(4, ge=2)
    max_number: int = Field(100, ge=2)
    max_target: int = Field(100, ge=1)


class TaskConfig(_Section):
    name: Literal["arith", "gsm8k", "aimo", "math500", "aime24", "countdown"] = "arith"
    # Data seed of the procedural tasks (arith, countdown), not the run's ``seed``: every
    # training seed sees the same problems and is evaluated on the same held-out set.
    seed: int = 0
    num_shots: int = Field(0, ge=0, le=9)
    verifier: Literal["exact", "math"] = "math"  # exact: the paper's GSM8K string match
    # None: the task's default (procedural tasks: 100,000 train records; datasets: every row).
    train_size: Optional[int] = Field(None, ge=1)
    eval_size: Optional[int] = Field(200, ge=1)  # held-out records for evaluation (None: all)
    arith: ArithConfig = Field(default_factory=ArithConfig)
    countdown: CountdownConfig = Field(default_factory=CountdownConfig)


class DataConfig(_Section):
    """Local files instead of the hub (air-gapped clusters)."""

    path: Optional[str] = None  # train split: JSONL or Parquet
    eval_path: Optional[str] = None  # held-out split: JSONL or Parquet
    question_field: Optional[str] = None  # None: the task's own field name
    answer_field: Optional[str] = None
    id_field: Optional[str] = None
    plain_answers: bool = False  # the answer field is the bare final answer (no '####')


class GRPOConfig(_Section):
    num_generations: int = Field(16, description="completions per prompt (the group size G)")
    batch_size: int = Field(256, ge=1, description="completions per optimizer step")
    temperature: float = Field(0.9, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_prompt_length: int = Field(256, ge=1)
    max_completion_length: int = Field(200, ge=1)
    beta: float = Field(0.04, ge=0)
    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.2, ge=0)
    loss_aggregation: Literal["token_mean", "seq_mean_token_mean", "dr_grpo"] = "token_mean"
    scale_rewards: Literal["std", "none"] = "std"
    filter_zero_variance: bool = False

    @model_validator(mode="after")
    def _groups(self) -> "GRPOConfig":
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
    max_steps: int = Field(100, ge=1)
    save_every_steps: int = Field(100, ge=0)  # 0: only the final checkpoint
    lr: float = Field(5e-6, gt=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.99, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(0.1, gt=0)
    eval_before_after: bool = True
    eval_every_steps: int = Field(0, ge=0)  # 0: off; else evaluate and keep the best model
    timeout_s: float = Field(600.0, gt=0, description="limit on any one remote call")
    keep_last_checkpoints: int = Field(3, ge=1)
    save_every_minutes: float = Field(0.0, ge=0)  # 0: by steps only
    preemption_deadline_s: float = Field(90.0, gt=0)  # SIGTERM -> checkpoint -> exit within this
    checkpoint_uri: Optional[str] = None  # default: output_dir; may be s3://... or gs://...


class RolloutConfig(_Section):
    num_workers: int = Field(2, ge=1)
    engine: Literal["auto", "hf", "vllm"] = "auto"
    num_cpus_per_worker: float = Field(1.0, ge=0)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    # Custom Ray resources each worker asks for, e.g. {rollout_node: 0.01} to land on the node
    # type that the cluster files in cluster/ label with it.
    resources: dict[str, float] = Field(default_factory=dict)
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # vLLM only
    # sync: generate with the newest weights (on-policy, the paper's setting). async: generate
    # step t+1 while step t trains, with weights at most max_staleness versions old.
    mode: Literal["sync", "async"] = "sync"
    max_staleness: int = Field(1, ge=1)
    is_cap: float = Field(2.0, gt=0, description="truncation of the async IS correction")


class LearnerConfig(_Section):
    num_learners: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 0
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per learner
    micro_batch_size: int = Field(16, ge=1, description="completions per forward/backward")
    gradient_checkpointing: bool = False


class MemoryConfig(_Section):
    mode: Literal["paper", "reference"] = "paper"
    k: int = Field(1, ge=1, description="nearest stored questions retrieved")
    capacity_keys: int = Field(10_000, ge=1)
    capacity_values: int = Field(100, ge=1)
    warmup: int = Field(50, ge=0, description="explore reward is 0 for this many units")
    warmup_unit: Literal["steps", "failure_keys"] = "steps"
    anneal_rate: float = Field(1.0, gt=0, le=1)
    window: int = Field(100, ge=1)
    lambda_exploit: float = 1.0
    lambda_explore: float = 1.0
    embedder: str = "all-MiniLM-L6-v2"
    embedder_backend: Literal["onnx", "torch"] = "onnx"
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    num_shards: int = Field(1, ge=1)
    value_text_chars: int = Field(400, ge=0)


class RewardSpecConfig(_Section):
    fn: str
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LoggingConfig(_Section):
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    progress_bar: bool = True


class RayConfig(_Section):
    address: Optional[str] = None  # None: start a local cluster (or join RAY_ADDRESS)
    num_cpus: Optional[int] = Field(None, ge=1)


class Config(_Section):
    method: Literal["r1", "cosine", "memoryr", "memoryr+"] = "memoryr+"
    seed: int = 0
    output_dir: str = "runs/default"
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    rewards: Optional[list[RewardSpecConfig]] = None  # None: the task's rule rewards
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        prompts = self.grpo.prompts_per_step
        if prompts % self.learner.num_learners:
            raise ValueError(
                f"learner.num_learners = {self.learner.num_learners} does not divide the "
                f"{prompts} prompt groups per step (grpo.batch_size / grpo.num_generations): "
                "each learner must get whole groups"
            )
        return self

    @property
    def uses_memory(self) -> bool:
        return self.method in ("memoryr", "memoryr+")


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
    try:
        tree = yaml.safe_load(source.read_text()) or {}
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
    return _merge(parent, tree)


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
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        where = str(source) + (f" with overrides {list(overrides)}" if overrides else "")
        raise ConfigError(_format_validation_error(exc, where)) from None


def config_to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
