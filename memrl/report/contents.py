"""What the report says: the headline table, collapse findings, trainer/engine drift, plot
captions and configs, as a document of blocks (``memrl.report.document``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from memrl.collapse import RULE_TITLES, RULES, CollapseRules, describe_rules
from memrl.report.configs import config_differences, shorten_config
from memrl.report.document import Block, Bullets, Code, Heading, Image, Para, Table
from memrl.report.runs import Run
from memrl.report.topics import Topic


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _headline_row(s: dict[str, Any]) -> tuple[str, ...]:
    best = _num(s["best_accuracy"])
    if s["best_accuracy"] is not None and s["best_step"] is not None:
        best += f" (step {s['best_step']})"
    collapse = "; ".join(f"{f['title']} (steps {f['first_step']}-{f['last_step']})"
                         for f in s["collapse"]) or "none"
    if s["collapse_skipped"]:
        collapse += f" ({len(s['collapse_skipped'])} of {len(RULES)} rules not checked)"
    return (s["run"], str(s["method"] or "—"), "—" if s["seed"] is None else str(s["seed"]),
            str(s["model"] or "—"), "—" if s["steps"] is None else str(s["steps"]),
            _duration(s["wall_seconds"]),
            f"{_num(s['accuracy_before'])} → {_num(s['accuracy_after'])}", best,
            _num(s["final_reward"]), collapse)


def _step_ranges(steps: Sequence[int]) -> str:
    """``3-5, 9`` for steps 3, 4, 5 and 9."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and step == spans[-1][1] + 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def _drift_text(drift: dict[str, Any] | None) -> str:
    if drift is None:
        return "not logged"
    highest = f"highest {_num(drift['highest'], 4)} at step {drift['highest_step']}"
    if drift["bound"] <= 0:
        return f"alarm off (rollout.max_behaviour_logprob_gap 0); {highest}"
    if not drift["steps"]:
        return f"no step over {drift['bound']:g} ({highest})"
    return f"DRIFT at steps {_step_ranges(drift['steps'])}, over {drift['bound']:g} ({highest})"


def report_document(runs: Sequence[Run], summaries: Sequence[dict[str, Any]],
                    plots: Sequence[tuple[Topic, Path | None]], smoothing: int,
                    rules: CollapseRules) -> list[Block]:
    """The whole report. ``summaries[i]``: ``summarise(runs[i])``; ``plots``: each topic with
    its PNG, or None where no run logs it."""
    blocks: list[Block] = [
        Heading(1, "memrl report"),
        Para(f"{len(runs)} run(s): " + ", ".join(f"{run.label} at {run.path}" for run in runs)
             + "."),
        Heading(2, "Summary"),
        Para(f"Accuracy is the fraction correct on the evaluation set (before → after "
             f"training; best over the evaluation points). Final reward: mean total reward "
             f"over the last {rules.window} training steps."),
        Table(("run", "method", "seed", "model", "steps", "wall time", "accuracy before → after",
               "best eval accuracy", "final reward", "collapse"),
              tuple(_headline_row(s) for s in summaries)),
        Heading(2, "Collapse checks"),
        Bullets(tuple(f"{RULE_TITLES[rule]}: {text}"
                      for rule, text in describe_rules(rules).items())),
    ]
    for s in summaries:
        items = [f"FIRED — {f['description']}" for f in s["collapse"]]
        items += [f"not checked — {RULE_TITLES[rule]}: {why}"
                  for rule, why in s["collapse_skipped"].items()]
        blocks += [Heading(3, s["run"]), Bullets(tuple(items or ["no rule fired"]))]
    blocks += [
        Heading(2, "Trainer/engine drift"),
        Para("Steps whose `train/behaviour_logprob_gap` (mean |learner − engine| log-prob per "
             "completion token) exceeded the run's `rollout.max_behaviour_logprob_gap`: the "
             "rollout engines sampled from other weights than the learners held (healthy runs "
             "sit near 0.015). The run warned once, at the first, naming the workers."),
        Bullets(tuple(f"{s['run']}: {_drift_text(s['drift'])}" for s in summaries)),
    ]
    blocks.append(Heading(2, "Plots"))
    notes = ["Grey dotted lines are the collapse thresholds; grey dashed, the completion cap."]
    if any(s["collapse"] for s in summaries):
        notes.append("Shaded spans mark the steps where a collapse rule fired, in the run's "
                     "colour, on the curves that rule reads.")
    if smoothing > 1:
        notes.append(f"Noisy curves show the raw values faintly and a trailing moving average "
                     f"over {smoothing} steps on top.")
    blocks.append(Para(" ".join(notes)))
    for topic, path in plots:
        blocks.append(Heading(3, f"{topic.name}.png — {topic.title}"))
        if path is None:
            blocks.append(Para(f"{topic.name}.png not drawn: {topic.absent}."))
            continue
        blocks.append(Image(topic.name, path.name))
        absent = [run.name for run in runs if not any(run.logs(k) for k in topic.metric_keys())]
        if absent:
            blocks.append(Para(f"Not in this plot (they log none of its keys): "
                               f"{', '.join(absent)}."))
    blocks.append(Heading(2, "Configs"))
    if len(runs) > 1:
        diff = config_differences(runs)
        blocks += [Heading(3, "Settings that differ between runs"),
                   diff if diff is not None else Para("The runs' configs are identical.")]
    for run in runs:
        short = shorten_config(run.config)
        blocks.append(Heading(3, run.name))
        # Flow style for the innermost mappings: one line per section.
        blocks.append(Code(yaml.safe_dump(short, sort_keys=False, default_flow_style=None,
                                          width=100)) if short
                      else Para(f"no config.yaml in {run.path}"))
    return blocks
