"""A run directory, loaded for a report: its metrics, config and summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from memrl.collapse import metric_series
from memrl.errors import UnexplainedFault
from memrl.run_dir import METRICS_FILE, RunDir
from memrl.train.metrics import read_metrics


class RunDirError(UnexplainedFault, ValueError):
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
        """Whether any of the run's metric lines carries ``key``."""
        return metric_series(self.records, key)[0].size > 0


def _read_mapping(path: Path, loader: Callable[[str], Any]) -> dict[str, Any]:
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
    """Load ``run_dir``; ``name`` defaults to the directory's name.

    Raises:
        RunDirError: the directory is missing, has no metrics.jsonl, or holds unreadable files.
    """
    path = Path(run_dir)
    files = RunDir(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {path} does not exist")
    if not files.metrics.is_file():
        raise RunDirError(f"{path} has no {METRICS_FILE} (is it a memrl run directory?)")
    try:
        records = read_metrics(path)
    except KeyError as exc:
        raise RunDirError(f"{files.metrics}: a line has no {exc} key") from exc
    except ValueError as exc:
        raise RunDirError(str(exc)) from exc
    return Run(path=path, name=name or path.resolve().name,
               config=_read_mapping(files.config, yaml.safe_load),
               summary=_read_mapping(files.summary, json.loads), records=records)


def run_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, widened to ``parent/name`` (then the full path) where they collide."""
    resolved = [p.resolve() for p in paths]
    for width in (1, 2):
        names = ["/".join(p.parts[-width:]) for p in resolved]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in resolved]
