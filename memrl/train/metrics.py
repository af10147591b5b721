"""Per-step metrics: one JSON line per step in ``metrics.jsonl``, TensorBoard, and W&B if set."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memrl.run_dir import RunDir
from memrl.step_log import count_lines, truncate_after


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf; a missing value is clearer than an invalid file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends each step's metrics to ``RUN_DIR/metrics.jsonl`` and mirrors them to the loggers.

    The file is opened in append mode and flushed every step, so a resumed run continues the
    same file and a killed run loses at most the step in progress.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str = "memrl", config: Mapping[str, Any] | None = None,
                 keep_lines: int = 0, resume_step: int | None = None):
        """``resume_step``: this run resumes a checkpoint of that step, taken when the file had
        ``keep_lines`` lines (-1: unknown, an older checkpoint); what the earlier run logged
        after the checkpoint is dropped, here and in TensorBoard, so each step appears once."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = RunDir(run_dir).metrics
        if resume_step is not None:
            self.lines = truncate_after(self.path, keep_lines, resume_step)
        else:
            self.lines = count_lines(self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides the earlier run's events from that step on (TensorBoard's own
            # restart handling), so its charts agree with metrics.jsonl.
            purge = resume_step + 1 if resume_step is not None else None
            self._tb = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard), purge_step=purge)
        self._wandb = None
        if wandb_project:
            import wandb  # pyright: ignore[reportMissingImports]  # optional: only with logging.wandb_project

            self._wandb = wandb.init(project=wandb_project, name=run_name, config=dict(config or {}),
                                     resume="allow")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        record = {"step": step, **{k: _finite(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        self.lines += 1
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """One merged record per step of ``RUN_DIR/metrics.jsonl``, in step order.

    A step may have several lines (training metrics, then evaluation); a resumed run that
    repeats a step overwrites the earlier values of the same keys."""
    path = RunDir(run_dir).metrics
    by_step: dict[int, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON line ({exc.msg})") from exc
            by_step.setdefault(int(record["step"]), {}).update(record)
    return [by_step[s] for s in sorted(by_step)]
