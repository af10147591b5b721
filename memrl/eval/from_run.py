"""Evaluation that remembers the run: the task settings and grader a training run used.

``memrl eval runs/default/model`` (or ``runs/default``) finds the run's resolved
``config.yaml`` and evaluates as the run's own evaluation did: the run's task with its settings
(e.g. arith numbers up to 20, its data seed and held-out size), the run's prompts (``num_shots``,
the shot seed ``seed``), completions of ``grpo.max_completion_length`` tokens, graded by the
task's correctness reward with the run's ``task.verifier``. An option given on the command line
wins over the run's value; ``--ignore-run`` evaluates with the task's built-in settings instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memrl.eval.settings import EvalSettingsError
from memrl.run_dir import CONFIG_FILE, RunDir

if TYPE_CHECKING:
    from memrl.config import Config
    from memrl.tasks.base import Task

# Options that would change the task itself: with a run, its config decides them.
_TASK_OPTIONS = ("task_option", "data_path", "question_field", "answer_field")


@dataclass
class RunSettings:
    """What ``memrl eval`` takes from a run: the task, the settings, and a record of both."""

    run_dir: Path
    model: str  # the model folder to load
    task: Task
    settings: dict[str, Any]  # EvalSettings keywords taken from the run
    taken: list[str] = field(default_factory=list)  # names of the settings taken, for the note

    def record(self) -> dict[str, Any]:
        """What the result JSON records under ``run``."""
        return {"run_dir": str(self.run_dir), "config": str(RunDir(self.run_dir).config),
                "taken_from_run": self.taken}

    def note(self) -> str:
        """One line saying which run and settings were used (printed before evaluating)."""
        values = ", ".join(f"{name} {self.settings[name]}" for name in self.taken)
        return (f"settings from run {self.run_dir} ({CONFIG_FILE}): task {self.task.name} as the "
                f"run configured it, {values}; --ignore-run for the task's built-in settings")


def find_run(model: str) -> tuple[Path, Path] | None:
    """(run directory, model folder) when ``model`` is a run directory (its ``model`` folder is
    evaluated) or a model folder inside one (``model``, ``best_model``); else None.
    EvalSettingsError names the run when it has no ``model`` folder."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    run = RunDir(folder)
    if run.config.is_file():
        if not run.model.is_dir():
            instead = f"its best model ({run.best_model})" if run.best_model.is_dir() else \
                f"a checkpoint's model ({run.checkpoints}/step_N/learner/hf, with --task)"
            raise EvalSettingsError(
                f"run {folder} has no model folder {run.model}: a run writes it when training ends, "
                f"so this one did not finish (or the folder was removed); evaluate {instead}, or "
                "resume the run (memrl train ... --resume auto)")
        return folder, run.model
    if RunDir(folder.parent).config.is_file():
        return folder.parent, folder
    return None


def _run_config(run_dir: Path, overrides: Sequence[str]) -> Config:
    from memrl.config import load_config

    return load_config(RunDir(run_dir).config, list(overrides))


def settings_from_run(run_dir: Path, model_dir: Path, options: dict[str, Any]) -> RunSettings:
    """The run's task and evaluation settings; ``options`` (the command line's, None when not
    given) win. ``options["run_override"]``: dotted ``key=value`` overrides of the run's config.

    Raises EvalSettingsError when an option contradicts the run (another task, or a task
    option that only ``--run-override`` or ``--ignore-run`` can express)."""
    from memrl.tasks import build_task

    cfg = _run_config(run_dir, options.get("run_override") or [])
    asked = options.get("task")
    if asked is not None and asked != cfg.task.name:
        raise EvalSettingsError(
            f"--task {asked!r}: the run at {run_dir} trained on {cfg.task.name!r}; drop --task, "
            "or pass --ignore-run to evaluate its model on another task with built-in settings"
        )
    for name in _TASK_OPTIONS:
        if options.get(name):
            flag = "--" + name.replace("_", "-")
            raise EvalSettingsError(
                f"{flag}: the run at {run_dir} fixes its task's settings in {CONFIG_FILE}; "
                f"change them with --run-override task.KEY=VALUE / data.KEY=VALUE, or pass "
                f"--ignore-run"
            )
    task = build_task(cfg)
    from_run = {
        "num_shots": cfg.task.num_shots,
        "seed": cfg.seed,  # the shots' seed in training (the task's data seed is in the task)
        "max_tokens": cfg.grpo.max_completion_length,
        "grader": "correctness_reward",
        "verifier": cfg.task.verifier,
    }
    taken = [name for name in from_run if options.get(name) is None]
    settings = {"task": cfg.task.name, **{name: from_run[name] for name in taken}}
    return RunSettings(run_dir=run_dir, model=str(model_dir), task=task, settings=settings,
                       taken=taken)
