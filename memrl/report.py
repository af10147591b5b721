"""``memrl report``: plots and a summary of training runs, with the collapse indicators.

Reads each ``RUN_DIR`` (``metrics.jsonl`` required; ``config.yaml`` and ``summary.json`` used
when present, so a run still in progress can be reported) and writes into ``out_dir``:

* one PNG per topic — ``accuracy.png``, ``rewards.png``, ``length.png``, ``kl.png``,
  ``memory.png``, ``time.png``, ``throughput.png`` — with every run overlaid in its own colour
  and labelled ``RUN_DIR name (method, seed N)``; a topic no run logs is not drawn, and the
  summary says so;
* ``report.md`` (or ``report.html``): a headline table, the collapse findings
  (``memrl.collapse``), the plots, and each run's shortened config.

``summarise_run`` gives the headline numbers of one run as a dict, for ``memrl compare``.
"""

from __future__ import annotations

import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import yaml

from memrl.collapse import (CLIPPED_KEY, CORRECTNESS_ZERO, FORMAT_COMPONENTS, LENGTH_KEY,
                            LENGTH_LENGTHENING, LENGTH_SHORTENING, REWARD_MODE, RULE_TITLES, RULES,
                            CollapseRules, check_rules, describe_rules, metric_series)
from memrl.train.metrics import read_metrics

Format = Literal["md", "html"]
FORMATS = ("md", "html")
EXIT_BAD_RUN = 2

# Left out of the shortened config: they do not change what a run learns.
_UNINFORMATIVE = ("output_dir", "logging", "ray")
_RESOURCE_SETTINGS = ("num_cpus", "num_gpus", "num_cpus_per_worker", "num_gpus_per_worker",
                      "gpu_memory_utilization", "num_shards", "micro_batch_size",
                      "gradient_checkpointing", "cache_dir", "timeout_s", "save_every_steps")
_MEMORY_METHODS = ("memoryr", "memoryr+")
# Components in the order the paper discusses them; unknown ones follow, sorted.
_REWARD_ORDER = ("total", "correctness", "integer", "strict_format", "soft_format", "xmlcount",
                 "cosine_length", "countdown_format", "countdown_equation", "memory_exploit",
                 "memory_explore")
_MEMORY_SIZES = ("memory/success_keys", "memory/success_values", "memory/failure_keys",
                 "memory/failure_values")
_MEMORY_REWARDS = ("memory/exploit_mean", "memory/explore_mean", "reward/memory_exploit/mean",
                   "reward/memory_explore/mean")
_TIME_PHASES = ("time/generate", "time/score", "time/memory", "time/reference", "time/train",
                "time/sync", "time/step")


class RunDirError(ValueError):
    """A run directory that cannot be reported; the message names the path and the problem."""


@dataclass
class Run:
    """One run directory, loaded. ``name`` labels it in tables; ``records``: ``read_metrics``."""

    path: Path
    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def method(self) -> str | None:
        return self.summary.get("method", self.config.get("method"))

    @property
    def seed(self) -> int | None:
        return self.summary.get("seed", self.config.get("seed"))

    @property
    def label(self) -> str:
        """Legend text: ``name (method, seed N)``."""
        return f"{self.name} ({self.method or '?'}, seed {'?' if self.seed is None else self.seed})"

    @property
    def max_completion_length(self) -> int | None:
        grpo = self.config.get("grpo") or {}
        return grpo.get("max_completion_length")

    def logs(self, key: str) -> bool:
        return metric_series(self.records, key)[0].size > 0


def _read_mapping(path: Path, loader) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = loader(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: cannot be parsed ({exc})") from exc
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_run(run_dir: str | Path, name: str | None = None) -> Run:
    """Load ``run_dir``; ``name`` defaults to the directory's name."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    if not (path / "metrics.jsonl").is_file():
        raise RunDirError(f"{path} has no metrics.jsonl (is it a memrl run directory?)")
    try:
        records = read_metrics(path)
    except KeyError as exc:
        raise RunDirError(f"{path / 'metrics.jsonl'}: a line has no {exc} key") from exc
    except ValueError as exc:
        raise RunDirError(str(exc)) from exc
    return Run(path=path, name=name or path.resolve().name,
               config=_read_mapping(path / "config.yaml", yaml.safe_load),
               summary=_read_mapping(path / "summary.json", json.loads), records=records)


def _names(paths: Sequence[Path]) -> list[str]:
    """Directory names, widened to ``parent/name`` (then the full path) where they collide."""
    resolved = [p.resolve() for p in paths]
    for width in (1, 2):
        names = ["/".join(p.parts[-width:]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in resolved]


def _last_training_step(run: Run) -> int | None:
    steps = [int(r["step"]) for r in run.records
             if any(k != "step" and not k.startswith("eval/") for k in r)]
    return max(steps) if steps else None


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
        "best_accuracy": best_accuracy,
        "best_step": best_step,
        "final_window": rules.window,
        "final_reward": float(reward[-rules.window:].mean()) if reward.size else None,
        "final_train_accuracy": float(accuracy[-rules.window:].mean()) if accuracy.size else None,
        "collapse": [c.finding.to_dict() for c in checks if c.finding is not None],
        "collapse_skipped": {c.rule: c.skipped for c in checks if c.skipped is not None},
    }


def summarise_run(run_dir: str | Path, rules: CollapseRules = CollapseRules()) -> dict[str, Any]:
    """Headline numbers of one run directory.

    Returns a dict with ``run`` (directory name), ``path``, ``method``, ``seed``, ``model``,
    ``steps``, ``wall_seconds``, ``accuracy_before``/``accuracy_after`` (evaluation, fraction
    correct; ``summary.json``'s, else the ``eval/accuracy`` line at step 0 / at the last training
    step), ``best_accuracy``/``best_step`` (``summary.json``'s, else the best ``eval/accuracy``
    line), ``final_reward`` and ``final_train_accuracy`` (means over the last ``final_window`` =
    ``rules.window`` training steps), ``collapse`` (the fired findings as dicts) and
    ``collapse_skipped`` (rule -> why it could not be evaluated). Unknown values are None.
    """
    return summarise(load_run(run_dir), rules)


# ----------------------------------------------------------------------------------- plots


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` points (fewer at the start), same length as input."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    values = np.asarray(values, dtype=np.float64)
    if window == 1 or values.size == 0:
        return values
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


@dataclass(frozen=True)
class _Panel:
    """One subplot: ``key`` as a line per run; ``points`` (evaluation) as markers per run."""

    key: str
    smooth: bool = True
    points: str | None = None
    guides: tuple[float, ...] = ()  # grey dotted reference lines (collapse thresholds)
    cap_line: bool = False  # the runs' grpo.max_completion_length, grey dashed
    shade: tuple[str, ...] = ()  # collapse rules whose fired step ranges are shaded here

    def keys(self) -> tuple[str, ...]:
        return (self.key,) if self.points is None else (self.key, self.points)


@dataclass(frozen=True)
class _Topic:
    name: str  # the PNG's stem
    title: str
    panels: tuple[_Panel, ...]
    absent: str  # what the summary says when no run logs the topic
    by_run: bool = False  # one subplot per run, one line per panel key (time per phase)

    def keys(self) -> tuple[str, ...]:
        return tuple(k for p in self.panels for k in p.keys())


_CORRECTNESS_SHADE = (REWARD_MODE, CORRECTNESS_ZERO)
# Reward panels on which a collapse rule's span is shaded: the signals the rule reads.
_REWARD_SHADES = {
    **{f"reward/{name}/mean": (REWARD_MODE,) for name in FORMAT_COMPONENTS},
    "reward/correctness/mean": _CORRECTNESS_SHADE,
    "reward/countdown_equation/mean": _CORRECTNESS_SHADE,
}
_RUN_LINESTYLES = ("-", "--", "-.", ":")  # so that runs with equal curves stay visible


def _reward_keys(runs: Sequence[Run]) -> list[str]:
    names = {k.split("/")[1] for run in runs for r in run.records for k in r
             if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2}
    ordered = [n for n in _REWARD_ORDER if n in names] + sorted(names - set(_REWARD_ORDER))
    return [f"reward/{n}/mean" for n in ordered]


def _topics(runs: Sequence[Run], rules: CollapseRules) -> list[_Topic]:
    return [
        _Topic("accuracy", "Accuracy: training completions (line), evaluation (markers)",
               (_Panel("accuracy", points="eval/accuracy", shade=_CORRECTNESS_SHADE),),
               "no run logs accuracy or eval/accuracy"),
        _Topic("rewards", "Reward components (per-step mean)",
               tuple(_Panel(k, shade=_REWARD_SHADES.get(k, ())) for k in _reward_keys(runs)),
               "no run logs reward/*/mean"),
        _Topic("length", "Completion length (tokens) and fraction clipped at the cap",
               (_Panel(LENGTH_KEY, guides=(rules.short_length_tokens,), cap_line=True,
                       shade=(LENGTH_SHORTENING, LENGTH_LENGTHENING)),
                _Panel(CLIPPED_KEY, guides=(rules.clipped_frac,), shade=(LENGTH_LENGTHENING,))),
               "no run logs completion/length/mean or completion/clipped_frac"),
        _Topic("kl", "KL divergence to the reference policy", (_Panel("train/kl"),),
               "no run logs train/kl"),
        _Topic("memory", "Episodic memory: sizes and intrinsic rewards",
               tuple(_Panel(k, smooth=False) for k in _MEMORY_SIZES)
               + tuple(_Panel(k) for k in _MEMORY_REWARDS),
               "no run logs memory/* or reward/memory_* keys (memory methods only)"),
        _Topic("time", "Seconds per step by phase (phases overlap, so they are not stacked)",
               tuple(_Panel(k) for k in _TIME_PHASES), "no run logs time/*", by_run=True),
        _Topic("throughput", "Throughput (tokens per second)",
               (_Panel("throughput/tokens_per_s"), _Panel("throughput/generate_tokens_per_s")),
               "no run logs throughput/*"),
    ]


@dataclass(frozen=True)
class _Style:
    label: str
    color: str
    linestyle: str = "-"


def _line(ax, steps: np.ndarray, values: np.ndarray, smoothing: int, smooth: bool,
          style: _Style) -> None:
    if smooth and smoothing > 1:
        ax.plot(steps, values, color=style.color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, moving_average(values, smoothing), color=style.color,
                linestyle=style.linestyle, linewidth=1.6)
    else:
        ax.plot(steps, values, color=style.color, linestyle=style.linestyle, linewidth=1.4,
                marker="." if steps.size < 30 else None)


def _widen_flat(ax) -> None:
    """A curve that is constant up to round-off (a smoothed constant) would otherwise fill the
    axis with 1e-13 wiggles; show it as the flat line it is."""
    low, high = ax.get_ylim()
    mid = (low + high) / 2
    if high - low < 1e-9 * max(1.0, abs(mid)):
        pad = 0.05 * max(abs(mid), 1e-3)
        ax.set_ylim(mid - pad, mid + pad)


def _grid(n: int):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(max(8.0, 4.6 * cols), 3.1 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    return fig, axes[:n]


def _draw_overlaid(topic: _Topic, runs: Sequence[Run], findings: Sequence[Sequence[dict]],
                   smoothing: int) -> tuple[Any, list[_Style]]:
    styles = [_Style(run.label, f"C{i % 10}", _RUN_LINESTYLES[i % len(_RUN_LINESTYLES)])
              for i, run in enumerate(runs)]
    panels = [p for p in topic.panels if any(run.logs(k) for run in runs for k in p.keys())]
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        for run, style, fired in zip(runs, styles, findings):
            steps, values = metric_series(run.records, panel.key)
            if steps.size:
                _line(ax, steps, values, smoothing, panel.smooth, style)
            if panel.points is not None:
                p_steps, p_values = metric_series(run.records, panel.points)
                ax.scatter(p_steps, p_values, color=style.color, marker="D", s=30, zorder=3,
                           edgecolors="black", linewidths=0.5)
            for finding in fired:
                if finding["rule"] in panel.shade:
                    ax.axvspan(finding["first_step"] - 0.5, finding["last_step"] + 0.5,
                               color=style.color, alpha=0.12, linewidth=0)
        caps = {run.max_completion_length for run in runs} - {None} if panel.cap_line else set()
        for y in sorted(caps):
            ax.axhline(y, color="grey", linestyle="--", linewidth=1.0)
        for y in panel.guides:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1.0)
        ax.set_title(panel.key, fontsize=10)
        _widen_flat(ax)
    return fig, [style for run, style in zip(runs, styles)
                 if any(run.logs(k) for k in topic.keys())]


def _draw_by_run(topic: _Topic, runs: Sequence[Run], smoothing: int) -> tuple[Any, list[_Style]]:
    shown = [run for run in runs if any(run.logs(k) for k in topic.keys())]
    fig, axes = _grid(len(shown))
    keys = [p.key for p in topic.panels if any(run.logs(p.key) for run in shown)]
    styles = [_Style(key, f"C{i % 10}") for i, key in enumerate(keys)]
    for ax, run in zip(axes, shown):
        for key, style in zip(keys, styles):
            steps, values = metric_series(run.records, key)
            if steps.size:
                _line(ax, steps, values, smoothing, True, style)
        ax.set_title(run.label, fontsize=10)
        ax.set_ylabel("seconds")
        _widen_flat(ax)
    return fig, styles


def _plot_topic(topic: _Topic, runs: Sequence[Run], findings: Sequence[Sequence[dict]],
                out_dir: Path, smoothing: int) -> Path:
    """Draw ``out_dir/<topic>.png``; ``findings[i]``: run i's fired collapse findings (dicts)."""
    from matplotlib.lines import Line2D

    if topic.by_run:
        fig, legend = _draw_by_run(topic, runs, smoothing)
    else:
        fig, legend = _draw_overlaid(topic, runs, findings, smoothing)
    title = topic.title + (f" — moving average over {smoothing} steps" if smoothing > 1 else "")
    fig.suptitle(title, fontsize=12)
    handles = [Line2D([], [], color=s.color, linestyle=s.linestyle, linewidth=2) for s in legend]
    fig.legend(handles, [s.label for s in legend], loc="outside lower center",
               ncols=min(3, len(legend)), fontsize=9, frameon=False)
    path = out_dir / f"{topic.name}.png"
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Image:
    alt: str
    src: str


@dataclass(frozen=True)
class _Code:
    text: str


_Block = _Heading | _Para | _Bullets | _Table | _Image | _Code


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_md(blocks: Sequence[_Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, _Para):
            out.append(block.text)
        elif isinstance(block, _Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, _Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                     "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, _Image):
            out.append(f"![{block.alt}]({block.src})")
        else:
            out.append(f"```yaml\n{block.text.rstrip()}\n```")
    return "\n\n".join(out) + "\n"


def _render_html(blocks: Sequence[_Block]) -> str:
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>memrl report</title>",
           "<style>body{font-family:sans-serif;max-width:1400px;margin:auto}"
           "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 8px}"
           "img{max-width:100%}pre{background:#f4f4f4;padding:8px}</style></head><body>"]
    for block in blocks:
        if isinstance(block, _Heading):
            out.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Para):
            out.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, _Bullets):
            out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, _Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif isinstance(block, _Image):
            out.append(f"<p><img src=\"{esc(block.src)}\" alt=\"{esc(block.alt)}\"></p>")
        else:
            out.append(f"<pre>{esc(block.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "—"
    whole = int(round(seconds))
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


def shorten_config(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape what a run learns: nulls, the output/logging/Ray sections,
    resource settings (CPUs, GPUs, micro-batches, timeouts, save interval), the memory section
    of non-memory methods, the tiny-model section of hub models and the settings of tasks other
    than ``task.name`` are left out."""
    method = config.get("method")
    task_name = (config.get("task") or {}).get("name")
    model_name = (config.get("model") or {}).get("name_or_path")

    def prune(node: Any, path: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        kept = {}
        for key, value in node.items():
            here = path + (str(key),)
            if value is None or (not path and key in _UNINFORMATIVE) or (
                    path and key in _RESOURCE_SETTINGS):
                continue
            if here == ("memory",) and method not in _MEMORY_METHODS:
                continue
            if here == ("model", "tiny") and model_name != "tiny":
                continue
            if path == ("task",) and isinstance(value, dict) and key != task_name:
                continue
            value = prune(value, here)
            if value != {}:
                kept[key] = value
        return kept

    return prune(config, ())


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _config_differences(runs: Sequence[Run]) -> _Table | None:
    flats = [_flatten({k: v for k, v in run.config.items() if k not in _UNINFORMATIVE})
             for run in runs]
    keys = sorted({k for flat in flats for k in flat})
    missing = object()
    differing = [k for k in keys if len({json.dumps(f.get(k, missing), default=str)
                                          for f in flats}) > 1]
    if not differing:
        return None
    rows = tuple((k,) + tuple("—" if k not in f else json.dumps(f[k]) for f in flats)
                 for k in differing)
    return _Table(("setting",) + tuple(run.name for run in runs), rows)


def _document(runs: Sequence[Run], summaries: Sequence[dict[str, Any]],
              plots: Sequence[tuple[_Topic, Path | None]], smoothing: int,
              rules: CollapseRules) -> list[_Block]:
    blocks: list[_Block] = [
        _Heading(1, "memrl report"),
        _Para(f"{len(runs)} run(s): " + ", ".join(f"{run.label} at {run.path}" for run in runs)
              + "."),
        _Heading(2, "Summary"),
        _Para(f"Accuracy is the fraction correct on the evaluation set (before → after "
              f"training; best over the evaluation points). Final reward: mean total reward "
              f"over the last {rules.window} training steps."),
        _Table(("run", "method", "seed", "model", "steps", "wall time", "accuracy before → after",
                "best eval accuracy", "final reward", "collapse"),
               tuple(_headline_row(s) for s in summaries)),
        _Heading(2, "Collapse checks"),
        _Bullets(tuple(f"{RULE_TITLES[rule]}: {text}"
                       for rule, text in describe_rules(rules).items())),
    ]
    for s in summaries:
        items = [f"FIRED — {f['description']}" for f in s["collapse"]]
        items += [f"not checked — {RULE_TITLES[rule]}: {why}"
                  for rule, why in s["collapse_skipped"].items()]
        blocks += [_Heading(3, s["run"]), _Bullets(tuple(items or ["no rule fired"]))]
    blocks.append(_Heading(2, "Plots"))
    notes = ["Grey dotted lines are the collapse thresholds; grey dashed, the completion cap."]
    if any(s["collapse"] for s in summaries):
        notes.append("Shaded spans mark the steps where a collapse rule fired, in the run's "
                     "colour, on the curves that rule reads.")
    if smoothing > 1:
        notes.append(f"Noisy curves show the raw values faintly and a trailing moving average "
                     f"over {smoothing} steps on top.")
    blocks.append(_Para(" ".join(notes)))
    for topic, path in plots:
        blocks.append(_Heading(3, f"{topic.name}.png — {topic.title}"))
        if path is None:
            blocks.append(_Para(f"{topic.name}.png not drawn: {topic.absent}."))
            continue
        blocks.append(_Image(topic.name, path.name))
        absent = [run.name for run in runs if not any(run.logs(k) for k in topic.keys())]
        if absent:
            blocks.append(_Para(f"Not in this plot (they log none of its keys): "
                                f"{', '.join(absent)}."))
    blocks.append(_Heading(2, "Configs"))
    if len(runs) > 1:
        diff = _config_differences(runs)
        blocks += [_Heading(3, "Settings that differ between runs"),
                   diff if diff is not None else _Para("The runs' configs are identical.")]
    for run in runs:
        short = shorten_config(run.config)
        blocks.append(_Heading(3, run.name))
        # Flow style for the innermost mappings: one line per section.
        blocks.append(_Code(yaml.safe_dump(short, sort_keys=False, default_flow_style=None,
                                           width=100)) if short
                      else _Para(f"no config.yaml in {run.path}"))
    return blocks


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, fmt: Format = "md",
                 smoothing: int = 1, rules: CollapseRules = CollapseRules()) -> Path:
    """Write the PNGs and ``report.md`` (``fmt="md"``) or ``report.html`` into ``out_dir``.

    Args:
        run_dirs: run directories, drawn in this order (colours C0, C1, ...).
        smoothing: trailing moving-average window in steps for the noisy curves (1: raw only;
            memory sizes and evaluation points are never smoothed).
        rules: collapse thresholds.
    Returns:
        The path of the report file.
    Raises:
        RunDirError: a run directory is missing, has no metrics.jsonl, or holds unreadable files.
    """
    if fmt not in FORMATS:
        raise ValueError(f"report format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if smoothing < 1:
        raise ValueError(f"smoothing window must be >= 1, got {smoothing}")
    if not run_dirs:
        raise RunDirError("no run directory given")
    paths = [Path(p) for p in run_dirs]
    runs = [load_run(path, name) for path, name in zip(paths, _names(paths))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarise(run, rules) for run in runs]
    findings = [s["collapse"] for s in summaries]
    plots: list[tuple[_Topic, Path | None]] = []
    for topic in _topics(runs, rules):
        if any(run.logs(k) for run in runs for k in topic.keys()):
            plots.append((topic, _plot_topic(topic, runs, findings, out, smoothing)))
        else:
            # A PNG left by an earlier report in the same folder would contradict this one.
            (out / f"{topic.name}.png").unlink(missing_ok=True)
            plots.append((topic, None))
    blocks = _document(runs, summaries, plots, smoothing, rules)
    report = out / f"report.{fmt}"
    report.write_text(_render_md(blocks) if fmt == "md" else _render_html(blocks),
                      encoding="utf-8")
    return report


def main_report(run_dirs: list[str], out: str | None, fmt: str, smoothing: int = 1) -> int:
    """``memrl report RUN_DIR [RUN_DIR ...] [--out DIR] [--format md|html] [--smooth N]``.

    Writes into ``out`` (default ``RUN_DIR/report`` of the first run), prints the report's path
    and returns 0; a bad run directory prints ``memrl report: ...`` to stderr and returns 2."""
    try:
        if not run_dirs:
            raise RunDirError("no run directory given")
        out_dir = Path(out) if out is not None else Path(run_dirs[0]) / "report"
        path = write_report(run_dirs, out_dir, fmt=fmt, smoothing=smoothing)
    except RunDirError as exc:
        print(f"memrl report: {exc}", file=sys.stderr)
        return EXIT_BAD_RUN
    print(path)
    return 0
