"""``memrl compare``: every method × seed of one experiment, then a table and overlaid plots.

Each trial is an ordinary training run in ``OUT/<method>_seed<seed>/`` (so any of them can be
inspected, reported or resumed on its own). The comparison reports, per method, mean ± std
over seeds of the final and best evaluation accuracy, sample efficiency (the first step whose
evaluation reached ``target`` accuracy — by default 5 points over the mean starting accuracy;
trials that never reach it are counted), how many seeds tripped each collapse rule
(``memrl.collapse``), and Memory-R+ minus R1 with a 95% confidence interval. Trials that
already finished are not trained again.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memrl.config import METHODS, ConfigError, load_config
from memrl.report.table import markdown_table
from memrl.run_dir import RunDir

DEFAULT_TARGET_GAIN = 0.05  # sample efficiency: steps to gain 5 accuracy points


@dataclass(frozen=True)
class Trial:
    method: str
    seed: int
    run_dir: Path


def plan_trials(methods: Sequence[str], seeds: Sequence[int], out: Path) -> list[Trial]:
    """One trial per method × seed, in that order; rejects unknown methods and duplicates."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods: unknown {bad}; choose from {list(METHODS)}")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--methods/--seeds repeat a value: {list(methods)} / {list(seeds)}")
    if not methods or not seeds:
        raise ConfigError("--methods and --seeds need at least one value each")
    safe = {m: m.replace("+", "_plus") for m in methods}
    return [Trial(m, s, out / f"{safe[m]}_seed{s}") for m in methods for s in seeds]


def steps_to_target(run_dir: Path, target: float) -> int | None:
    """First step whose ``eval/accuracy`` reached ``target`` (None if it never did)."""
    from memrl.train.metrics import read_metrics

    for record in read_metrics(run_dir):
        if record.get("eval/accuracy") is not None and record["eval/accuracy"] >= target:
            return int(record["step"])
    return None


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    known = [v for v in values if v is not None]
    if not known:
        return None, None, 0
    std = statistics.stdev(known) if len(known) > 1 else 0.0
    return statistics.fmean(known), std, len(known)


def aggregate(summaries: Sequence[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per-method rows: mean ± std of final/best accuracy, steps to target, collapse counts."""
    rows = []
    for method in dict.fromkeys(s["method"] for s in summaries):
        runs = [s for s in summaries if s["method"] == method]
        final = _mean_std([s.get("accuracy_after") for s in runs])
        lenient = _mean_std([s.get("accuracy_lenient_after") for s in runs])
        best = _mean_std([s.get("best_accuracy") for s in runs])
        before = _mean_std([s.get("accuracy_before") for s in runs])
        reached = [s["steps_to_target"] for s in runs if s.get("steps_to_target") is not None]
        collapse: dict[str, int] = {}
        for s in runs:
            for rule in {f["rule"] for f in s.get("collapse", [])}:
                collapse[rule] = collapse.get(rule, 0) + 1
        rows.append({
            "method": method, "seeds": len(runs),
            "accuracy_before_mean": before[0],
            "final_mean": final[0], "final_std": final[1],
            "final_lenient_mean": lenient[0], "final_lenient_std": lenient[1],
            "best_mean": best[0], "best_std": best[1],
            "target": target, "reached_target": len(reached),
            "steps_to_target_mean": statistics.fmean(reached) if reached else None,
            "collapse": collapse,
        })
    return rows


def paired_difference(summaries: Sequence[dict[str, Any]], a: str, b: str, key: str,
                      confidence: float = 0.95) -> dict[str, Any] | None:
    """Mean of ``a − b`` in ``summaries[key]`` over the seeds both methods ran (paired by seed:
    the same seed gives both the same prompts), with a Student-t ``confidence`` interval.

    None when fewer than two seeds pair up (no interval can be estimated)."""
    from scipy import stats

    by_seed = {m: {s["seed"]: s.get(key) for s in summaries if s["method"] == m} for m in (a, b)}
    diffs = [x - y for seed in sorted(by_seed[a])
             if (x := by_seed[a].get(seed)) is not None and (y := by_seed[b].get(seed)) is not None]
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / len(diffs) ** 0.5
    return {"a": a, "b": b, "key": key, "seeds": len(diffs), "mean": mean, "low": mean - half,
            "high": mean + half, "confidence": confidence, "differences": diffs}


def format_difference(d: dict[str, Any]) -> str:
    """One line: ``a − b`` in points with its interval."""
    label = {"accuracy_after": "final", "best_accuracy": "best"}.get(d["key"], d["key"])
    return (f"{d['a']} − {d['b']}, {label} accuracy (paired by seed, {d['seeds']} seeds): "
            f"{100 * d['mean']:+.1f} points, {100 * d['confidence']:.0f}% CI "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]")


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {100 * (std or 0.0):.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the per-method rows (accuracy in %)."""
    header = ["method", "seeds", "before %", "final %", "final, lenient grader %", "best %",
              "reached target", "steps to target", "collapse"]
    cells = []
    for r in rows:
        collapse = ", ".join(f"{k}×{v}" for k, v in sorted(r["collapse"].items())) or "none"
        steps = "–" if r["steps_to_target_mean"] is None else f"{r['steps_to_target_mean']:.1f}"
        before = "–" if r["accuracy_before_mean"] is None else f"{100 * r['accuracy_before_mean']:.1f}"
        cells.append([r["method"], str(r["seeds"]), before, _pct(r["final_mean"], r["final_std"]),
                      _pct(r.get("final_lenient_mean"), r.get("final_lenient_std")),
                      _pct(r["best_mean"], r["best_std"]),
                      f"{r['reached_target']}/{r['seeds']} (≥{100 * r['target']:.0f}%)", steps, collapse])
    return markdown_table(header, cells)


def run_compare(config: str | None, overrides: Sequence[str], methods: Sequence[str],
                seeds: Sequence[int], out: Path, *, target: float | None = None,
                resume: str = "auto") -> dict[str, Any]:
    """Train every trial that has not finished yet, then write ``compare.json``,
    ``compare.md`` and the overlaid report under ``out``; returns the comparison."""
    from memrl.report.summary import summarise_run
    from memrl.report.write import write_report
    from memrl.train.loop import run_training

    trials = plan_trials(methods, seeds, out)
    configs = [load_config(config, [*overrides, f"method={t.method}", f"seed={t.seed}",
                                    f"output_dir={t.run_dir}"]) for t in trials]  # all validated first
    for trial, cfg in zip(trials, configs):
        if RunDir(trial.run_dir).summary.is_file():
            continue  # finished earlier: a re-run of compare only trains what is missing
        print(f"== {trial.method} seed {trial.seed} -> {trial.run_dir}", flush=True)
        run_training(cfg, resume=resume)
    summaries = [summarise_run(t.run_dir) for t in trials]
    if target is None:  # 5 points over the mean starting accuracy
        befores = [s["accuracy_before"] for s in summaries if s.get("accuracy_before") is not None]
        target = min(1.0, (statistics.fmean(befores) if befores else 0.0) + DEFAULT_TARGET_GAIN)
    for s, trial in zip(summaries, trials):
        s["steps_to_target"] = steps_to_target(trial.run_dir, target)
    rows = aggregate(summaries, target)
    # What the memory adds: the paper's method against its memory-free baseline, when both ran.
    differences = [d for key in ("accuracy_after", "best_accuracy")
                   if (d := paired_difference(summaries, "memoryr+", "r1", key)) is not None]
    result = {"config": config, "overrides": list(overrides), "target": target, "rows": rows,
              "differences": differences, "trials": summaries}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2, default=str))
    report = write_report([t.run_dir for t in trials], out / "report")
    table = format_table(rows)
    if differences:
        table += "\n\n" + "\n".join(f"- {format_difference(d)}" for d in differences)
    (out / "compare.md").write_text(
        f"# memrl compare\n\nConfig: `{config or 'configs/default.yaml'}` {' '.join(overrides)}\n\n"
        f"{table}\n\nAccuracy: greedy on the held-out set (mean ± std over seeds). "
        f"Target for sample efficiency: {100 * target:.0f}%.\n\nPlots: [{report.name}]({report.relative_to(out)})\n")
    print(table)
    return result
