"""Drawing a report topic into a PNG with matplotlib: runs overlaid, or one subplot per run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memrl.collapse import metric_series
from memrl.report.runs import Run
from memrl.report.topics import Topic

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn
    from matplotlib.typing import LineStyleType

_RUN_LINESTYLES: tuple[LineStyleType, ...] = ("-", "--", "-.", ":")  # so that runs with equal curves stay visible


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
class _Style:
    label: str
    color: str
    linestyle: LineStyleType = "-"


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


def _draw_overlaid(topic: Topic, runs: Sequence[Run], findings: Sequence[Sequence[dict]],
                   smoothing: int) -> tuple[Any, list[_Style]]:
    styles = [_Style(run.label, f"C{i % 10}", _RUN_LINESTYLES[i % len(_RUN_LINESTYLES)])
              for i, run in enumerate(runs)]
    panels = [p for p in topic.panels if any(run.logs(k) for run in runs for k in p.metric_keys())]
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
        caps = ({run.max_completion_length for run in runs if run.max_completion_length is not None}
                if panel.cap_line else set())
        for y in sorted(caps):
            ax.axhline(y, color="grey", linestyle="--", linewidth=1.0)
        for y in panel.guides:
            ax.axhline(y, color="grey", linestyle=":", linewidth=1.0)
        ax.set_title(panel.key, fontsize=10)
        _widen_flat(ax)
    return fig, [style for run, style in zip(runs, styles)
                 if any(run.logs(k) for k in topic.metric_keys())]


def _draw_by_run(topic: Topic, runs: Sequence[Run], smoothing: int) -> tuple[Any, list[_Style]]:
    shown = [run for run in runs if any(run.logs(k) for k in topic.metric_keys())]
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


def plot_topic(topic: Topic, runs: Sequence[Run], findings: Sequence[Sequence[dict]],
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


def plot_bands(panels: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], path: Path, *,
               title: str, target: float | None = None) -> Path:
    """Draw one subplot per panel (its title -> its lines) to ``path``: each line (its label ->
    :func:`memrl.compare.metric_band`'s dict) is its mean over seeds with a band (mean ± std,
    clipped to its seeds' min–max). ``target``: a grey dotted line on the first panel (the
    success threshold)."""
    from matplotlib.lines import Line2D

    fig, axes = _grid(len(panels))
    legend: dict[str, _Style] = {}  # one legend entry per label, one colour per label
    for n, (ax, (panel, bands)) in enumerate(zip(axes, panels.items())):
        for label, band in bands.items():
            if not band["steps"]:
                continue
            if label not in legend:
                i = len(legend)
                legend[label] = _Style(f"{label} ({max(band['seeds'])} seeds)", f"C{i % 10}",
                                       _RUN_LINESTYLES[i % len(_RUN_LINESTYLES)])
            style = legend[label]
            steps, mean, std = (np.asarray(band[key], dtype=np.float64) for key in ("steps", "mean", "std"))
            low = np.maximum(mean - std, np.asarray(band["min"], dtype=np.float64))
            high = np.minimum(mean + std, np.asarray(band["max"], dtype=np.float64))
            ax.fill_between(steps, low, high, color=style.color, alpha=0.2, linewidth=0)
            _line(ax, steps, mean, 1, False, style)
        if target is not None and n == 0:
            ax.axhline(target, color="grey", linestyle=":", linewidth=1.0)
        ax.set_title(panel, fontsize=10)
        _widen_flat(ax)
    fig.suptitle(title, fontsize=12)
    styles = list(legend.values())
    handles = [Line2D([], [], color=s.color, linestyle=s.linestyle, linewidth=2) for s in styles]
    fig.legend(handles, [s.label for s in styles], loc="outside lower center",
               ncols=min(4, max(1, len(styles))), fontsize=9, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
