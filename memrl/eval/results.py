"""The result of ``memrl eval``: per problem and sample, totals, the JSON and the table."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrl.eval.pass_at_k import PASS_AT_K_ESTIMATOR, pass_at_k
from memrl.eval.settings import EvalSettings
from memrl.report.table import text_table


@dataclass
class SampleResult:
    """One completion, its extracted answer and its correctness."""

    completion: str
    extracted: str | None
    extracted_from: str  # see ScoredAnswer.source
    correct: bool
    completion_tokens: int


@dataclass
class ProblemResult:
    """One problem: its greedy completion and, with pass@k, its samples."""

    id: str
    question: str
    gold: str
    completion: str
    extracted: str | None
    extracted_from: str
    correct: bool
    completion_tokens: int
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def num_correct_samples(self) -> int:
        return sum(sample.correct for sample in self.samples)


@dataclass
class BenchmarkResult:
    """Outcome of :func:`memrl.eval.evaluate.evaluate`. ``model`` is the name given,
    ``model_path`` what was loaded; ``engine`` the engine actually used (``"hf"`` or
    ``"vllm"``); ``run`` what was taken from a training run (None when none was)."""

    model: str
    model_path: str
    task: str
    split: str
    engine: str
    settings: EvalSettings
    problems: list[ProblemResult]
    elapsed_s: float
    run: dict[str, Any] | None = None

    @property
    def num_total(self) -> int:
        return len(self.problems)

    @property
    def num_correct(self) -> int:
        return sum(problem.correct for problem in self.problems)

    @property
    def num_unparsed(self) -> int:
        return sum(problem.extracted is None for problem in self.problems)

    @property
    def accuracy(self) -> float:
        """Greedy accuracy under ``settings.grader``: the fraction answered correctly."""
        return self.num_correct / self.num_total

    @property
    def mean_completion_tokens(self) -> float:
        return sum(p.completion_tokens for p in self.problems) / self.num_total

    @property
    def pass_at_k(self) -> float | None:
        """Mean pass@k over problems (None without sampling, i.e. ``pass_k == 1``)."""
        k = self.settings.pass_k
        if k == 1:
            return None
        values = [pass_at_k(k, p.num_correct_samples, k) for p in self.problems]
        return sum(values) / len(values)

    @property
    def sample_accuracy(self) -> float | None:
        """Fraction of all sampled completions that are correct (None without sampling)."""
        k = self.settings.pass_k
        if k == 1:
            return None
        return sum(p.num_correct_samples for p in self.problems) / (k * self.num_total)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-serialisable dict (what :func:`write_result` writes)."""
        settings = self.settings
        sampled = settings.pass_k > 1
        problems = []
        for problem in self.problems:
            entry = dataclasses.asdict(problem)
            if sampled:
                entry["num_correct_samples"] = problem.num_correct_samples
            else:
                del entry["samples"]
            problems.append(entry)
        return {
            "model": self.model,
            "model_path": self.model_path,
            "task": self.task,
            "split": self.split,
            "engine": self.engine,
            "data_path": settings.data_path,
            "task_options": settings.task_options,
            "grader": settings.grader,
            "verifier": settings.verifier if settings.grader == "correctness_reward" else None,
            "run": self.run,
            "decoding": settings.decoding(),
            "num_total": self.num_total,
            "num_correct": self.num_correct,
            "num_unparsed": self.num_unparsed,
            "accuracy": self.accuracy,
            "mean_completion_tokens": self.mean_completion_tokens,
            "pass_at_k": (
                {
                    "k": settings.pass_k,
                    "value": self.pass_at_k,
                    "sample_accuracy": self.sample_accuracy,
                    "estimator": PASS_AT_K_ESTIMATOR,
                }
                if sampled
                else None
            ),
            "elapsed_s": self.elapsed_s,
            "records": problems,
        }


def write_result(result: BenchmarkResult, path: str | Path) -> Path:
    """Write ``result.to_json()`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def grader_label(settings: EvalSettings) -> str:
    """The grader in words, e.g. ``correctness_reward, verifier exact``."""
    if settings.grader == "correctness_reward":
        return f"correctness_reward, verifier {settings.verifier}"
    return settings.grader


def format_table(result: BenchmarkResult) -> str:
    """A short plain-text summary table of ``result``."""
    s = result.settings
    rows = [
        ("accuracy (greedy)", f"{result.accuracy:.4f}  ({result.num_correct}/{result.num_total})"),
        ("unparsed (greedy)", str(result.num_unparsed)),
        ("mean completion tokens", f"{result.mean_completion_tokens:.1f}  (max {s.max_tokens})"),
    ]
    if result.pass_at_k is not None:
        sampling = f"T={s.temperature:g}, top_p={s.top_p:g}"
        rows.append((f"pass@{s.pass_k} ({sampling})", f"{result.pass_at_k:.4f}"))
        rows.append((f"sample accuracy ({sampling})", f"{result.sample_accuracy:.4f}"))
    header = (
        f"{result.task} ({result.split}), {result.num_total} problems, {s.num_shots}-shot, "
        f"model {result.model} [{result.engine}], {result.elapsed_s:.1f} s\n"
        f"grader: {grader_label(s)}"
    )
    return header + "\n" + text_table([("metric", "value"), *rows])
