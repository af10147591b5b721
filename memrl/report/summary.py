"""A run's headline numbers: accuracy before/after, best evaluation, final reward, collapse, and
the steps where the rollout engines drifted from the learners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from memrl.collapse import CollapseRules, check_rules, metric_series
from memrl.config import RolloutConfig, default_of
from memrl.metric_keys import TRAIN_BEHAVIOUR_LOGPROB_GAP
from memrl.report.runs import Run, load_run

GAP_BOUND_KEY = "max_behaviour_logprob_gap"  # of the rollout section


def _last_training_step(run: Run) -> int | None:
    steps = [int(r["step"]) for r in run.records
             if any(k != "step" and not k.startswith("eval/") for k in r)]
    return max(steps) if steps else None


def drift(run: Run) -> dict[str, Any] | None:
    """The steps whose ``train/behaviour_logprob_gap`` exceeded the run's
    ``rollout.max_behaviour_logprob_gap`` (the bound its drift alarm warned at; 0: off):
    ``bound``, ``steps``, ``highest`` gap and its ``highest_step``. None when not logged."""
    steps, gaps = metric_series(run.records, TRAIN_BEHAVIOUR_LOGPROB_GAP)
    if not steps.size:
        return None
    bound = float((run.config.get("rollout") or {}).get(GAP_BOUND_KEY, default_of(RolloutConfig, GAP_BOUND_KEY)))
    over = [int(step) for step, gap in zip(steps, gaps) if bound > 0 and gap > bound]
    top = int(np.argmax(gaps))
    return {"bound": bound, "steps": over, "highest": float(gaps[top]), "highest_step": int(steps[top])}


def summarise(run: Run, rules: CollapseRules = CollapseRules()) -> dict[str, Any]:
    """Headline numbers of a loaded run; see ``summarise_run``."""
    eval_steps, eval_acc = metric_series(run.records, "eval/accuracy")
    best_accuracy = run.summary.get("best_accuracy")
    best_step = run.summary.get("best_step")
    if best_accuracy is None and eval_acc.size:
        best = int(np.argmax(eval_acc))  # the first step reaching the best value
        best_accuracy, best_step = float(eval_acc[best]), int(eval_steps[best])
    last_step = _last_training_step(run)
    before, after = run.summary.get("accuracy_before"), run.summary.get("accuracy_after")
    if before is None and eval_steps.size and eval_steps[0] == 0:
        before = float(eval_acc[0])
    if after is None and eval_steps.size and last_step is not None and eval_steps[-1] >= last_step:
        after = float(eval_acc[-1])
    _, reward = metric_series(run.records, "reward/total/mean")
    _, accuracy = metric_series(run.records, "accuracy")
    model = run.summary.get("model", (run.config.get("model") or {}).get("name_or_path"))
    checks = check_rules(run.records, run.max_completion_length, rules)
    return {
        "run": run.name,
        "path": str(run.path),
        "method": run.method,
        "seed": run.seed,
        "model": model,
        "steps": run.summary.get("steps", last_step),
        "wall_seconds": run.summary.get("wall_seconds"),
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_lenient_before": run.summary.get("accuracy_lenient_before"),
        "accuracy_lenient_after": run.summary.get("accuracy_lenient_after"),
        "best_accuracy": best_accuracy,
        "best_step": best_step,
        "final_window": rules.window,
        "final_reward": float(reward[-rules.window:].mean()) if reward.size else None,
        "final_train_accuracy": float(accuracy[-rules.window:].mean()) if accuracy.size else None,
        "collapse": [c.finding.to_dict() for c in checks if c.finding is not None],
        "collapse_skipped": {c.rule: c.skipped for c in checks if c.skipped is not None},
        "drift": drift(run),
    }


def summarise_run(run_dir: str | Path, rules: CollapseRules = CollapseRules()) -> dict[str, Any]:
    """Headline numbers of one run directory.

    Returns a dict with ``run`` (directory name), ``path``, ``method``, ``seed``, ``model``,
    ``steps``, ``wall_seconds``, ``accuracy_before``/``accuracy_after`` (evaluation, fraction
    correct; ``summary.json``'s, else the ``eval/accuracy`` line at step 0 / at the last training
    step), ``best_accuracy``/``best_step`` (``summary.json``'s, else the best ``eval/accuracy``
    line), ``final_reward`` and ``final_train_accuracy`` (means over the last ``final_window`` =
    ``rules.window`` training steps), ``collapse`` (the fired findings as dicts) and
    ``collapse_skipped`` (rule -> why it could not be evaluated) and ``drift`` (the steps over
    the trainer/engine drift bound, see :func:`drift`). Unknown values are None.
    """
    return summarise(load_run(run_dir), rules)
