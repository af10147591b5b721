"""The run-directory reference, generated from the layout and the metric catalogue.

``python -m memrl.run_dir_docs`` writes ``docs/run-directory.md`` from :data:`memrl.run_dir.LAYOUT`
and :data:`memrl.metric_keys.CATALOGUE`; a test checks that the committed file equals a fresh
rendering, so the page cannot drift from the modules that own the names.
"""

from __future__ import annotations

import sys
from pathlib import Path

from memrl.generated_docs import DOCS_DIR, generator_main, write_generated
from memrl.metric_keys import CATALOGUE, GROUPS, MetricKey
from memrl.run_dir import LAYOUT

DOCS_PATH = DOCS_DIR / "run-directory.md"

_HEADER = """\
# The run directory and its metrics

<!-- Generated from memrl/run_dir.py and memrl/metric_keys.py by `python -m memrl.run_dir_docs`;
edit the descriptions there. -->

A run writes everything into its `output_dir` (`runs/default` for `configs/default.yaml`);
only the checkpoints can live elsewhere (`trainer.checkpoint_uri`). `<...>` and `N` stand for
a part of a name that varies.
"""

_METRICS = """\
## Metrics

`metrics.jsonl` holds one JSON object per line: a training step's metrics, or an evaluation's
(`eval/*`). Every line has `step`; TensorBoard and W&B get the same keys (numbers only). A key
appears where it applies: the memory's keys and reward terms with a memory method, the
reward components the run configured. `{...}` in a key stands for one part of its name.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _layout_table() -> list[str]:
    rows = ["| path | contents |", "|---|---|"]
    rows += [f"| `{entry.path}` | {_cell(entry.meaning)} |" for entry in LAYOUT]
    return rows


def _group_section(group: str, keys: list[MetricKey]) -> list[str]:
    title = f"`{group}/`" if group else "Top-level keys"
    rows = [f"### {title}", "", GROUPS[group], "", "| key | unit | meaning |", "|---|---|---|"]
    rows += [f"| `{k.name}` | {k.unit} | {_cell(k.meaning)} |" for k in keys]
    return rows + [""]


def render_reference() -> str:
    """The whole reference as Markdown (what ``docs/run-directory.md`` holds).

    Raises ``ValueError`` for a catalogued key whose group has no entry in ``GROUPS``."""
    lines = [_HEADER, "## Files", "", *_layout_table(), "", _METRICS]
    missing = sorted({k.group for k in CATALOGUE} - set(GROUPS))
    if missing:
        raise ValueError(f"memrl/metric_keys.py: add a GROUPS entry for {missing}")
    for group in GROUPS:
        keys = [k for k in CATALOGUE if k.group == group]
        if keys:
            lines += _group_section(group, keys)
    return "\n".join(lines).rstrip() + "\n"


def write_reference(path: Path = DOCS_PATH) -> Path:
    """Write :func:`render_reference` to ``path`` (default ``docs/run-directory.md``)."""
    return write_generated(render_reference(), path)


def main(argv: list[str] | None = None) -> int:
    """``python -m memrl.run_dir_docs [--out PATH | --stdout]``."""
    return generator_main(argv, prog="python -m memrl.run_dir_docs", description=__doc__,
                          render=render_reference, default=DOCS_PATH)


if __name__ == "__main__":
    sys.exit(main())
