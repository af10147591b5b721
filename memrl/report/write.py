"""Writing a report folder: the PNGs and ``report.md`` or ``report.html``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from memrl.collapse import CollapseRules
from memrl.report.contents import report_document
from memrl.report.plots import plot_topic
from memrl.report.render_html import render_html
from memrl.report.render_markdown import render_markdown
from memrl.report.runs import RunDirError, load_run, run_names
from memrl.report.summary import summarise
from memrl.report.topics import Topic, report_topics

Format = Literal["md", "html"]
FORMATS = ("md", "html")


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
    runs = [load_run(path, name) for path, name in zip(paths, run_names(paths))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = [summarise(run, rules) for run in runs]
    findings = [s["collapse"] for s in summaries]
    plots: list[tuple[Topic, Path | None]] = []
    for topic in report_topics(runs, rules):
        if any(run.logs(k) for run in runs for k in topic.metric_keys()):
            plots.append((topic, plot_topic(topic, runs, findings, out, smoothing)))
        else:
            # A PNG left by an earlier report in the same folder would contradict this one.
            (out / f"{topic.name}.png").unlink(missing_ok=True)
            plots.append((topic, None))
    blocks = report_document(runs, summaries, plots, smoothing, rules)
    report = out / f"report.{fmt}"
    report.write_text(render_markdown(blocks) if fmt == "md" else render_html(blocks),
                      encoding="utf-8")
    return report
