"""``memrl compare``: every method × seed of one experiment, then a table and overlaid plots.

Each trial is an ordinary training run in ``OUT/<method>_seed<seed>/`` (so any of them can be
inspected, reported or resumed on its own). The comparison reports, per method:

- the success rate: seeds whose evaluation reached ``target`` accuracy (by default 5 points
  over the mean starting accuracy; ``--target`` states it), and the mean steps to reach it
  (sample efficiency, over the seeds that did);
- mean ± std and min–max over seeds of the final and the best evaluation accuracy;
- how many seeds tripped each collapse rule (``memrl.collapse``);

and Memory-R+ minus each of R1, the random-bonus control (``r1+random``) and Memory-R, paired
by seed, with a 95% Student-t interval and an exact two-sided sign test, for the methods that
ran. ``accuracy_bands.png`` draws each method's evaluation accuracy over steps, mean ± std over
seeds; ``mechanism.png`` draws beside it the share of worked answers per method and Memory-R+'s
intrinsic rewards by outcome and answer style, hit rates and memory sizes. Trials that already
finished are not trained again. With both ``memoryr+`` and ``r1+random`` and no
``random_bonus.*`` setting, each ``r1+random`` seed matches the bonus to the Memory-R+ trial of
its seed (``random_bonus.match_run``), which is trained first.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memrl import metric_keys as k
from memrl.collapse import metric_series
from memrl.config import METHODS, ConfigError, load_config
from memrl.report.table import markdown_table
from memrl.run_dir import RunDir

DEFAULT_TARGET_GAIN = 0.05  # sample efficiency: steps to gain 5 accuracy points
# Memory-R+ against each of these, when both ran: the memory-free baseline, the random-bonus
# control (does the memory matter, or any dense bonus?) and the exploit-only ablation.
BASELINES = ("r1", "r1+random", "memoryr")
DIFFERENCE_KEYS = ("accuracy_after", "best_accuracy")


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


def _spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    known = [v for v in values if v is not None]
    return (min(known), max(known)) if known else (None, None)


def aggregate(summaries: Sequence[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per-method rows: success rate (seeds reaching ``target``), mean ± std and min–max of
    final/best accuracy, steps to target, collapse counts."""
    rows = []
    for method in dict.fromkeys(s["method"] for s in summaries):
        runs = [s for s in summaries if s["method"] == method]
        finals = [s.get("accuracy_after") for s in runs]
        bests = [s.get("best_accuracy") for s in runs]
        final, best = _mean_std(finals), _mean_std(bests)
        lenient = _mean_std([s.get("accuracy_lenient_after") for s in runs])
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
            "final_min": _spread(finals)[0], "final_max": _spread(finals)[1],
            "final_lenient_mean": lenient[0], "final_lenient_std": lenient[1],
            "best_mean": best[0], "best_std": best[1],
            "best_min": _spread(bests)[0], "best_max": _spread(bests)[1],
            "target": target, "reached_target": len(reached), "success_rate": len(reached) / len(runs),
            "steps_to_target_mean": statistics.fmean(reached) if reached else None,
            "collapse": collapse,
        })
    return rows


def sign_test(differences: Sequence[float]) -> dict[str, Any]:
    """Exact two-sided sign test of "``a − b`` is as often positive as negative": ties (a zero
    difference) are left out, as usual; p = 1 when every pair ties."""
    from scipy import stats

    positive = sum(d > 0 for d in differences)
    negative = sum(d < 0 for d in differences)
    p = float(stats.binomtest(positive, positive + negative, 0.5).pvalue) if positive + negative else 1.0
    return {"positive": positive, "negative": negative, "ties": len(differences) - positive - negative,
            "p": p}


def paired_difference(summaries: Sequence[dict[str, Any]], a: str, b: str, key: str,
                      confidence: float = 0.95) -> dict[str, Any] | None:
    """Mean of ``a − b`` in ``summaries[key]`` over the seeds both methods ran (paired by seed:
    the same seed gives both the same prompts), with a Student-t ``confidence`` interval and
    an exact sign test (``sign``: :func:`sign_test`).

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
            "high": mean + half, "confidence": confidence, "differences": diffs,
            "sign": sign_test(diffs)}


def method_differences(summaries: Sequence[dict[str, Any]], method: str = "memoryr+",
                       baselines: Sequence[str] = BASELINES) -> list[dict[str, Any]]:
    """``method`` minus each baseline that ran, final then best accuracy (:func:`paired_difference`)."""
    return [d for b in baselines for key in DIFFERENCE_KEYS
            if (d := paired_difference(summaries, method, b, key)) is not None]


def format_difference(d: dict[str, Any]) -> str:
    """One line: ``a − b`` in points with its interval and sign test."""
    label = {"accuracy_after": "final", "best_accuracy": "best"}.get(d["key"], d["key"])
    sign = d["sign"]
    return (f"{d['a']} − {d['b']}, {label} accuracy (paired by seed, {d['seeds']} seeds): "
            f"{100 * d['mean']:+.1f} points, {100 * d['confidence']:.0f}% CI "
            f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]; sign test {sign['positive']}+ "
            f"{sign['negative']}− {sign['ties']} ties, p = {sign['p']:.3g}")


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f} ± {100 * (std or 0.0):.1f}"


def _range(low: float | None, high: float | None) -> str:
    return "–" if low is None or high is None else f"{100 * low:.1f}–{100 * high:.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the per-method rows (accuracy in %: mean ± std, then min–max)."""
    header = ["method", "seeds", "before %", "final %", "final min–max", "final, lenient grader %",
              "best %", "best min–max", "reached target", "steps to target", "collapse"]
    cells = []
    for r in rows:
        collapse = ", ".join(f"{rule}×{n}" for rule, n in sorted(r["collapse"].items())) or "none"
        steps = "–" if r["steps_to_target_mean"] is None else f"{r['steps_to_target_mean']:.1f}"
        before = "–" if r["accuracy_before_mean"] is None else f"{100 * r['accuracy_before_mean']:.1f}"
        cells.append([r["method"], str(r["seeds"]), before, _pct(r["final_mean"], r["final_std"]),
                      _range(r.get("final_min"), r.get("final_max")),
                      _pct(r.get("final_lenient_mean"), r.get("final_lenient_std")),
                      _pct(r["best_mean"], r["best_std"]), _range(r.get("best_min"), r.get("best_max")),
                      f"{r['reached_target']}/{r['seeds']} (≥{100 * r['target']:.0f}%)", steps, collapse])
    return markdown_table(header, cells)


def metric_band(series: Sequence[tuple[Iterable[int], Iterable[float]]]) -> dict[str, list[float]]:
    """A metric over steps across seeds: for each step any seed logged it at, the mean, std
    (0 with one seed), min and max over the seeds that did, and their number.

    ``series``: one ``(steps, values)`` per seed."""
    by_step: dict[int, list[float]] = {}
    for steps, values in series:
        for step, value in zip(steps, values):
            by_step.setdefault(int(step), []).append(float(value))
    band: dict[str, list[float]] = {"steps": [], "mean": [], "std": [], "min": [], "max": [], "seeds": []}
    for step in sorted(by_step):
        values = by_step[step]
        band["steps"].append(step)
        band["mean"].append(statistics.fmean(values))
        band["std"].append(statistics.stdev(values) if len(values) > 1 else 0.0)
        band["min"].append(min(values))
        band["max"].append(max(values))
        band["seeds"].append(len(values))
    return band


def mechanism_panels(records_by_method: dict[str, list[list[dict[str, Any]]]],
                     method: str = "memoryr+") -> dict[str, dict[str, dict[str, list[float]]]]:
    """The mechanism figure's panels, each a title -> {line label -> :func:`metric_band`}:
    evaluation accuracy and the share of worked answers for every method, then ``method``'s
    exploit and explore rewards (unweighted) over the correct, incorrect, worked and direct
    completions, its memories' hit rates and sizes. ``records_by_method``: per method, each
    seed's metric records. Panels whose metrics no run logged are left out."""
    def bands(runs: list[list[dict[str, Any]]], key: str) -> dict[str, list[float]]:
        return metric_band([metric_series(records, key) for records in runs])

    ours = records_by_method.get(method, [])
    splits = {"correct": k.MECHANISM_CORRECT, "incorrect": k.MECHANISM_INCORRECT,
              "worked": k.MECHANISM_WORKED, "direct": k.MECHANISM_DIRECT}
    panels = {
        "evaluation accuracy (greedy, held-out)":
            {m: bands(runs, k.EVAL_ACCURACY) for m, runs in records_by_method.items()},
        "share of worked answers (sampled)":
            {m: bands(runs, k.MECHANISM_WORKED_FRAC) for m, runs in records_by_method.items()},
        **{f"{method}: {term} reward by completion":
           {split: bands(ours, key.format(component=component)) for split, key in splits.items()}
           for term, component in (("exploit", "memory_exploit"), ("explore", "memory_explore"))},
        f"{method}: memory hit rates": {"exploit": bands(ours, k.MEMORY_EXPLOIT_HIT_RATE),
                                        "explore": bands(ours, k.MEMORY_EXPLORE_HIT_RATE)},
        f"{method}: reasonings stored": {"success memory": bands(ours, k.MEMORY_SUCCESS_VALUES),
                                         "failure memory": bands(ours, k.MEMORY_FAILURE_VALUES)},
    }
    return {title: lines for title, lines in panels.items()
            if any(band["steps"] for band in lines.values())}


def _trial_overrides(trial: Trial, trials: Sequence[Trial], match_bonus: bool) -> list[str]:
    """The trial's own overrides; an ``r1+random`` trial matched to the Memory-R+ trial of its
    seed gets ``random_bonus.match_run``."""
    own = [f"method={trial.method}", f"seed={trial.seed}", f"output_dir={trial.run_dir}"]
    if match_bonus and trial.method == "r1+random":
        partner = next(t for t in trials if t.method == "memoryr+" and t.seed == trial.seed)
        own.append(f"random_bonus.match_run={partner.run_dir}")
    return own


def run_compare(config: str | None, overrides: Sequence[str], methods: Sequence[str],
                seeds: Sequence[int], out: Path, *, target: float | None = None,
                resume: str = "auto") -> dict[str, Any]:
    """Train every trial that has not finished yet, then write ``compare.json``,
    ``compare.md``, ``accuracy_bands.png``, ``mechanism.png`` and the overlaid report under
    ``out``; returns the comparison."""
    from memrl.report.plots import plot_bands
    from memrl.report.summary import summarise_run
    from memrl.report.write import write_report
    from memrl.train.loop import run_training
    from memrl.train.metrics import read_metrics

    trials = plan_trials(methods, seeds, out)
    # r1+random takes its bonus's scale from Memory-R+'s run of the same seed, unless the
    # config gives one.
    match_bonus = "r1+random" in methods and "memoryr+" in methods and \
        not load_config(config, [*overrides, "method=r1"]).random_bonus.is_set
    configs = [load_config(config, [*overrides, *_trial_overrides(t, trials, match_bonus)])
               for t in trials]  # all validated first
    # Memory-R+ trials first: a matched r1+random trial reads its partner's metrics.
    order = sorted(range(len(trials)), key=lambda i: match_bonus and trials[i].method == "r1+random")
    for i in order:
        trial, cfg = trials[i], configs[i]
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
    # What the memory adds: the paper's method against the baseline, the control and the
    # ablation, when both of a pair ran.
    differences = method_differences(summaries)
    records = {m: [read_metrics(t.run_dir) for t in trials if t.method == m] for m in dict.fromkeys(methods)}
    bands = {m: metric_band([metric_series(runs, k.EVAL_ACCURACY) for runs in records[m]])
             for m in records}
    result = {"config": config, "overrides": list(overrides), "target": target, "rows": rows,
              "differences": differences, "accuracy_bands": bands, "trials": summaries}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2, default=str))
    report = write_report([t.run_dir for t in trials], out / "report")
    bands_png = plot_bands({"evaluation accuracy": bands}, out / "accuracy_bands.png",
                           title="Evaluation accuracy (greedy, held-out): mean ± std over seeds, within min–max",
                           target=target)
    mechanism_png = plot_bands(mechanism_panels(records), out / "mechanism.png",
                               title="The mechanism: mean ± std over seeds, within min–max", target=target)
    table = format_table(rows)
    if differences:
        table += "\n\n" + "\n".join(f"- {format_difference(d)}" for d in differences)
    (out / "compare.md").write_text(
        f"# memrl compare\n\nConfig: `{config or 'configs/default.yaml'}` {' '.join(overrides)}\n\n"
        f"{table}\n\nAccuracy: greedy on the held-out set (mean ± std over seeds, then min–max). "
        f"Success: a seed whose evaluation reached the target, {100 * target:.1f}%; steps to "
        f"target: mean over those seeds. Differences: paired by seed, Student-t interval and "
        f"exact two-sided sign test (ties left out).\n\n"
        f"Plots: [{bands_png.name}]({bands_png.relative_to(out)}), "
        f"[{mechanism_png.name}]({mechanism_png.relative_to(out)}), [{report.name}]({report.relative_to(out)})\n")
    print(table)
    return result
