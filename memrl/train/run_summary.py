"""The run's result: accuracy before, best (with its model) and after, written as ``summary.json``.

While the run goes on, the evaluations so far live in ``summary_partial.json``, so a resumed
run keeps its before-accuracy and its best model instead of measuring them again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memrl.config import Config
from memrl.run_dir import RunDir

# What a resumed run takes over from the partial summary of the run it continues.
_CARRIED_OVER = ("accuracy_before", "accuracy_lenient_before", "best_accuracy", "best_step")


class RunSummary:
    """Before/best/final accuracy of one run and where its models are.

    ``export_best`` writes the current policy to a folder (the learners' Hugging Face export);
    it is called when an evaluation beats the best so far."""

    def __init__(self, cfg: Config, files: RunDir, *, resumed_at: int | None,
                 export_best: Callable[[Path], None]):
        self.files, self._export_best = files, export_best
        self.partial_path = files.summary_partial
        self.values: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed,
                                       "model": cfg.model.name_or_path, "resumed_from_step": resumed_at}
        if resumed_at is not None and self.partial_path.is_file():
            earlier = json.loads(self.partial_path.read_text())
            self.values.update({k: v for k, v in earlier.items() if k in _CARRIED_OVER})

    @property
    def has_before(self) -> bool:
        """The starting model was evaluated (in this run or the one it resumes)."""
        return "accuracy_before" in self.values

    def record_before(self, result: Mapping[str, Any]) -> None:
        """The starting model's evaluation: it is also the best so far (step 0)."""
        self.values["accuracy_before"] = result["accuracy"]
        self.values["accuracy_lenient_before"] = result["accuracy_lenient"]
        self.values["best_accuracy"], self.values["best_step"] = result["accuracy"], 0
        self._write_partial()

    def record_eval(self, step: int, result: Mapping[str, Any]) -> float:
        """An evaluation at ``step``: export the policy to ``best_model/`` when it is the best
        so far. Returns its accuracy."""
        best = self.values.get("best_accuracy")
        if best is None or result["accuracy"] > best:
            self.values["best_accuracy"], self.values["best_step"] = result["accuracy"], step
            self._export_best(self.files.best_model)
        self.values["accuracy_lenient_after"] = result["accuracy_lenient"]  # of the latest evaluation
        self._write_partial()
        return float(result["accuracy"])

    def finish(self, *, steps: int, wall_seconds: float, accuracy_after: float | None,
               starting_model: str) -> dict[str, Any]:
        """Write ``summary.json`` and return it. ``starting_model`` is the best model when no
        step beat the starting model's evaluation."""
        values = self.values
        if accuracy_after is not None:
            values["accuracy_after"] = accuracy_after
        values.update({"steps": steps, "wall_seconds": wall_seconds,
                       "model_dir": str(self.files.model)})
        if "best_step" in values:  # step 0 is the starting model itself
            values["best_model_dir"] = str(self.files.best_model) if values["best_step"] \
                else starting_model
        self.files.summary.write_text(json.dumps(values, indent=2))
        return values

    def _write_partial(self) -> None:
        self.partial_path.write_text(json.dumps(self.values))
