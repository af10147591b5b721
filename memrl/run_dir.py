"""The run directory: every file and folder a run writes into its ``output_dir``, named once.

The names below are the run directory's layout; the trainer, ``memrl report``, ``memrl
compare``, ``memrl eval`` and the checkpoints build their paths from them, through
:class:`RunDir` for a local directory or the names themselves for a checkpoint URI (``s3://``
...). :data:`LAYOUT` describes each one; ``docs/run-directory.md`` is generated from it
(:mod:`memrl.run_dir_docs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memrl.errors import ERROR_LOG

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LEDGER_FILE = "ledger.jsonl"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_FILE = "summary.json"
SUMMARY_PARTIAL_FILE = "summary_partial.json"
MODEL_DIR = "model"
BEST_MODEL_DIR = "best_model"
MEMORY_DIR = "memory"
FINAL_MEMORY_DIR = "final"  # under MEMORY_DIR
MEMORY_UPLOAD_PREFIX = "upload-"  # under MEMORY_DIR: a snapshot staged for a cloud checkpoint
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"  # under CHECKPOINTS_DIR
CHECKPOINT_PREFIX = "step_"  # CHECKPOINTS_DIR/step_N
PARTIAL_MARK = ".partial-"  # CHECKPOINTS_DIR/step_N.partial-<id>: a checkpoint being written
CHECKPOINT_DRIVER_FILE = "driver.json"  # under step_N
CHECKPOINT_LEARNER_DIR = "learner"  # under step_N
CHECKPOINT_MEMORY_DIR = "memory"  # under step_N
CHECKPOINT_MANIFEST_FILE = "manifest.json"  # under step_N
CONTROL_FILE = "control.yaml"
LOCK_FILE = ".memrl.lock"
ERROR_LOG_FILE = ERROR_LOG  # named in memrl.errors, which writes it
REPORT_DIR = "report"
LOGS_DIR = "logs"
DRIVER_LOG_FILE = "driver.log"  # under LOGS_DIR


def checkpoint_name(step: int) -> str:
    """``step_N``: the folder of the complete checkpoint of ``step`` under ``checkpoints/``."""
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(name: str) -> int | None:
    """The step of a complete checkpoint's folder name ``step_N``; None for any other name
    (``latest``, a partial checkpoint)."""
    number = name[len(CHECKPOINT_PREFIX):] if name.startswith(CHECKPOINT_PREFIX) else ""
    return int(number) if number.isdigit() else None


def checkpoints_uri(output: str) -> str:
    """``OUTPUT/checkpoints`` for a path or a URI (``file://``, ``s3://`` ...)."""
    return f"{output.rstrip('/')}/{CHECKPOINTS_DIR}"


def eval_result_name(task: str, split: str) -> str:
    """``eval_<task>_<split>.json``: the file ``memrl eval`` writes into the model folder."""
    return f"eval_{task}_{split}.json"


def actor_log_name(actor: str) -> str:
    """``<actor>.log``: the file under ``logs/`` of the actor named ``actor`` at start-up
    (``learner rank 0`` -> ``learner-rank-0.log``, ``rollout-1`` -> ``rollout-1.log``)."""
    return f"{actor.replace(' ', '-')}.log"


@dataclass(frozen=True)
class Entry:
    """One file or folder of the layout: its path under ``output_dir`` (folders end in ``/``;
    ``<...>`` and ``N`` stand for a part that varies) and what it holds."""

    path: str
    meaning: str


_STEP_N = f"{CHECKPOINTS_DIR}/{CHECKPOINT_PREFIX}N"

LAYOUT: tuple[Entry, ...] = (
    Entry(CONFIG_FILE, "the resolved config: every key's value as the run used it (`memrl eval` "
          "of the run's model reads its task settings from here)"),
    Entry(METRICS_FILE, "one JSON object per step (and per evaluation), the keys below; after a "
          "resume each step appears once (the resumed run supersedes what the killed run logged "
          "after its checkpoint)"),
    Entry(LEDGER_FILE, "the prompt ledger: one JSON object per committed optimizer step, what the "
          "learners trained on: per prompt its dataset id (`id`, `epoch`, `index`; the step's "
          "`task` and `split`), the completions they received and those that entered the loss, "
          "and the weight version of each; cut back to the checkpoint on resume like "
          "`metrics.jsonl`. `memrl audit` checks it "
          "([operations.md](operations.md#the-prompt-ledger-and-memrl-audit))"),
    Entry(f"{TENSORBOARD_DIR}/", "the same metrics for TensorBoard (`logging.tensorboard`)"),
    Entry(SUMMARY_FILE, "written at the end: `method`, `seed`, `model`, `accuracy_before`, "
          "`accuracy_after`, `accuracy_lenient_before`, `accuracy_lenient_after`, `best_accuracy`, "
          "`best_step`, `steps`, `wall_seconds`, `model_dir`, `best_model_dir`, "
          "`resumed_from_step`"),
    Entry(SUMMARY_PARTIAL_FILE, "the summary so far, rewritten after each evaluation: a resumed "
          "run keeps its `accuracy_before` and best accuracy from here"),
    Entry(f"{MODEL_DIR}/", "the final policy as a Hugging Face folder (safetensors; loads in "
          "transformers and vLLM)"),
    Entry(f"{MODEL_DIR}/{eval_result_name('<task>', '<split>')}",
          "what `memrl eval runs/default` (or `.../model`) wrote: the result of each problem and "
          "the accuracy (also beside `best_model/`'s weights when that is evaluated)"),
    Entry(f"{BEST_MODEL_DIR}/", "the policy of the best evaluation so far "
          "(`trainer.eval_every_steps`), as a Hugging Face folder"),
    Entry(f"{MEMORY_DIR}/", "the memory service's own folder (with a memory method)"),
    Entry(f"{MEMORY_DIR}/{FINAL_MEMORY_DIR}/", "the final memory snapshot "
          "(`memrl memory inspect runs/default/memory/final`)"),
    Entry(f"{MEMORY_DIR}/{MEMORY_UPLOAD_PREFIX}<name>/", "a checkpoint's memory snapshot staged "
          "here before its upload, when `trainer.checkpoint_uri` is a cloud URI"),
    Entry(f"{CHECKPOINTS_DIR}/", "resumable checkpoints (`--resume auto`); under "
          "`trainer.checkpoint_uri` instead when that is set"),
    Entry(f"{CHECKPOINTS_DIR}/{LATEST_FILE}", "one line naming the newest complete `step_N`, "
          "written after it is complete"),
    Entry(f"{_STEP_N}/", "the checkpoint of step N; the last `trainer.keep_last_checkpoints` "
          "are kept"),
    Entry(f"{_STEP_N}/{CHECKPOINT_DRIVER_FILE}", "the driver's state: step, weight version, "
          "prompt-stream position (and, in async mode, the next step's prompts), RNG state, the "
          "config, the lines of `metrics.jsonl` and `ledger.jsonl` so far"),
    Entry(f"{_STEP_N}/{CHECKPOINT_LEARNER_DIR}/", "the learner group's state (weights, "
          "optimizer, scheduler) and the policy as a Hugging Face folder"),
    Entry(f"{_STEP_N}/{CHECKPOINT_MEMORY_DIR}/", "the episodic-memory snapshot (its own "
          "verified format)"),
    Entry(f"{_STEP_N}/{CHECKPOINT_MANIFEST_FILE}", "sha256 and size of every file above, "
          "written last: resuming verifies every file against it"),
    Entry(f"{_STEP_N}{PARTIAL_MARK}<id>/", "a checkpoint being written; renamed to `step_N` "
          "once complete, removed if its run died"),
    Entry(CONTROL_FILE, "written by you while the run trains: `rollout: {num_workers: N}` "
          "changes the number of rollout workers ([operations.md](operations.md))"),
    Entry(LOCK_FILE, "held while a run writes here: a second run on the same `output_dir` is "
          "refused, naming the holder ([troubleshooting.md](troubleshooting.md))"),
    Entry(ERROR_LOG_FILE, "the full traceback of a failure whose short message was printed"),
    Entry(f"{REPORT_DIR}/", "what `memrl report runs/default` wrote (plots and tables)"),
    Entry(f"{LOGS_DIR}/", "what the libraries and actors wrote, off the terminal (`memrl train` "
          "prints memrl's own lines only; `--verbose` or `logging.verbose: true` keeps everything on "
          "the terminal and writes nothing here)"),
    Entry(f"{LOGS_DIR}/{DRIVER_LOG_FILE}", "the driver process's library output and log records "
          "(Ray, transformers, warnings), with times"),
    Entry(f"{LOGS_DIR}/{actor_log_name('<actor>')}", "one actor's output, e.g. `learner-rank-0.log`, "
          "`rollout-0.log`, `memory-shard-0.log` (vLLM's engine, DeepSpeed, the memory's encoder); a "
          "restarted actor appends to its file"),
)


@dataclass(frozen=True, init=False)
class RunDir:
    """The paths of one local run directory ``root`` (a run's ``output_dir``)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def summary_partial(self) -> Path:
        return self.root / SUMMARY_PARTIAL_FILE

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def best_model(self) -> Path:
        return self.root / BEST_MODEL_DIR

    @property
    def memory(self) -> Path:
        return self.root / MEMORY_DIR

    @property
    def final_memory(self) -> Path:
        return self.memory / FINAL_MEMORY_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def checkpoint(self, step: int) -> Path:
        """The complete checkpoint of ``step`` (when the checkpoints are in this directory)."""
        return self.checkpoints / checkpoint_name(step)

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST_FILE

    @property
    def control(self) -> Path:
        return self.root / CONTROL_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def error_log(self) -> Path:
        return self.root / ERROR_LOG_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def driver_log(self) -> Path:
        return self.logs / DRIVER_LOG_FILE
