"""The ``memrl eval`` command line: arguments, a run's settings, the table and the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memrl.config import ConfigError, parse_override
from memrl.eval.graders import GRADERS, VERIFIERS
from memrl.eval.settings import ENGINES, EvalSettings, EvalSettingsError
from memrl.run_dir import eval_result_name

# torch, transformers and math-verify are imported where they are used, so that building the
# ``memrl eval`` argument parser (memrl --help) stays instant.

EXIT_USAGE_ERROR = 2  # the model, data or options cannot be used (message on stderr)
_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(EvalSettings))


def default_output_path(model: str, task: str, split: str) -> Path:
    """``eval_<task>_<split>.json`` in the model folder when ``model`` is one, else the cwd."""
    name = eval_result_name(task, split)
    folder = Path(model).expanduser()
    return folder / name if folder.is_dir() else Path.cwd() / name


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``memrl eval`` arguments (their dests are what :func:`main_eval` reads)."""
    # The defaults, stated once in EvalSettings (read without building one: no task import).
    # Options a training run can supply default to None here, so that main_eval can tell an
    # option the user gave from one the run should fill.
    d = argparse.Namespace(**{
        f.name: f.default for f in dataclasses.fields(EvalSettings)
        if f.default is not dataclasses.MISSING
    })
    parser.add_argument(
        "model",
        help="model folder, Hugging Face hub id, or a training run (its folder or its model "
        "folder: the run's task settings and grader are used unless overridden)",
    )
    parser.add_argument(
        "--task", default=None,
        help="task name, e.g. arith, gsm8k, math500, aime24, countdown (a wrong name lists all); "
        "required unless MODEL is a run",
    )
    parser.add_argument("--split", default=d.split, help="split to evaluate (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    parser.add_argument(
        "--pass-k", type=int, default=d.pass_k,
        help="also sample K completions per problem and report pass@K (default: %(default)s)",
    )
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help="sampling temperature of the pass@k samples (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=d.top_p,
                        help="top-p of the pass@k samples (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"completion tokens (default: the run's grpo.max_completion_length, "
                        f"else {d.max_tokens})")
    parser.add_argument("--num-shots", type=int, default=None,
                        help=f"k-shot exemplars in each prompt (default: the run's, else "
                        f"{d.num_shots})")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"default: the run's seed, else {d.seed}")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="completions per engine call (default: %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, default=d.engine,
                        help="auto: vLLM when a working build is installed (its CPU build, or CUDA "
                        "with a GPU), else transformers (default: %(default)s)")
    parser.add_argument(
        "--grader", choices=GRADERS, default=None,
        help="extractive_match: answer read from <answer>, \\boxed{} or free text, math-verify; "
        "correctness_reward: the task's correctness reward as in training (default: "
        f"correctness_reward for a run, else {d.grader})",
    )
    parser.add_argument("--verifier", choices=VERIFIERS, default=None,
                        help=f"answer check of the correctness_reward grader (default: the run's "
                        f"task.verifier, else {d.verifier})")
    parser.add_argument("--data-path", default=None,
                        help="local JSONL/Parquet file with the split's problems")
    parser.add_argument("--question-field", default=None, help="question field of --data-path")
    parser.add_argument("--answer-field", default=None, help="answer field of --data-path")
    parser.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="task constructor option, value parsed as YAML (e.g. min_steps=2); repeatable",
    )
    parser.add_argument(
        "--run-override", action="append", default=[], metavar="DOTTED.KEY=VALUE",
        help="override a key of the run's config (e.g. task.arith.max_value=50); repeatable",
    )
    parser.add_argument("--ignore-run", action="store_true",
                        help="evaluate a run's model with the task's built-in settings")
    parser.add_argument("--out", default=None,
                        help="result JSON (default: eval_<task>_<split>.json in the model folder "
                        "if it is one, else the current folder)")


def _parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        if "." in key:
            raise EvalSettingsError(f"--task-option {item!r}: expected key=value, no dots")
        options[key] = value
    return options


def main_eval(args: argparse.Namespace | None = None, **kwargs: Any) -> int:
    """Run ``memrl eval`` from parsed arguments (:func:`add_eval_arguments`) and/or keyword
    arguments of the same names (``model``, ``task``, ``out``, ``task_option`` as a list of
    ``key=value`` strings, ...; keywords win). Prints the table, writes the JSON; returns 0,
    or 2 with a message on stderr when the model, data or options cannot be used."""
    from memrl.eval.evaluate import evaluate
    from memrl.eval.from_run import find_run, settings_from_run
    from memrl.eval.results import format_table
    from memrl.model.loading import ModelUnavailableError
    from memrl.tasks.hub import DatasetUnavailableError

    options = {**(vars(args) if args is not None else {}), **kwargs}
    model = options["model"]
    run = None
    try:
        found = None if options.get("ignore_run") else find_run(model)
        run = settings_from_run(*found, options) if found is not None else None
        if run is None and options.get("run_override"):
            raise EvalSettingsError(f"--run-override: {model} is not a training run "
                                    f"(no config.yaml beside or above it)")
        if run is None and options.get("task") is None:
            raise EvalSettingsError("--task is required when MODEL is not a training run")
        task_options = dict(options.get("task_options") or {})
        task_options.update(_parse_task_options(options.get("task_option") or []))
        chosen = {
            name: options[name]
            for name in _SETTING_NAMES
            if options.get(name) is not None and name != "task_options"
        }
        if run is not None:
            chosen.update(run.settings)
            model = run.model
            print(run.note())
        settings = EvalSettings(**chosen, task_options=task_options)
        result = evaluate(model, settings, task=run.task if run else None,
                          run=run.record() if run else None)
    except (
        ModelUnavailableError,
        DatasetUnavailableError,
        FileNotFoundError,
        ConfigError,
        EvalSettingsError,
    ) as exc:
        which = f"run {run.run_dir}: " if run is not None else ""
        print(f"memrl eval: {which}{exc}", file=sys.stderr)
        return EXIT_USAGE_ERROR
    print(format_table(result))
    return _write(result, options.get("out"), default_output_path(model, result.task, result.split))


def _write(result: Any, asked: str | None, default: Path) -> int:
    """Write the result JSON to ``asked`` (``--out``), else to ``default`` or, when that folder
    cannot be written (a read-only model folder), to the current folder; says where."""
    from memrl.eval.results import write_result

    places = [Path(asked)] if asked else list(dict.fromkeys([default, Path.cwd() / default.name]))
    failures = []
    for place in places:
        try:
            path = write_result(result, place)
        except OSError as exc:
            failures.append(f"{place} ({exc.strerror or exc})")
            continue
        if failures:
            print(f"could not write {failures[0]}; wrote the result here instead")
        print(f"wrote {path}")
        return 0
    print(f"memrl eval: could not write the result: {'; '.join(failures)}; pass --out FILE in a folder "
          "you can write", file=sys.stderr)
    return EXIT_USAGE_ERROR
