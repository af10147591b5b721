"""``memrl eval``: greedy accuracy and sampled pass@k of a model on one split of a task.

Prompts are built exactly as in training (the task's system prompt, ``num_shots`` exemplars,
the tokenizer's chat template). Answers are read from the free text as the paper's LightEval
"extractive match" does (memory-r-plus.md, "Evaluation"), in this order of preference:

1. the content of the XML ``<answer>`` tag (when the completion has one),
2. else the last ``\\boxed{}``,
3. else math-verify's own extraction from the whole completion (LaTeX, then plain
   expressions; e.g. the 19 of "The answer is 19.").

The first non-empty candidate is the answer and is checked against the gold answer with
:func:`memrl.verify.check_answers` (exact for plain numbers, math-verify otherwise); a
completion with no candidate is unparsed, and wrong. Countdown is checked by its own equation
check (the equation in ``<answer>`` must use each given number once and hit the target).

Accuracy is greedy. With ``pass_k > 1`` each problem also gets ``k`` sampled completions
(``temperature``, ``top_p``) and pass@k is the unbiased estimator of Chen et al. (2021),
``1 - C(n - c, k) / C(n, k)``, with ``n = k`` samples drawn here, so per problem it is 1 when
any of the ``k`` samples is correct, else 0; the mean of ``c / n`` is reported alongside as
the sampled accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from memrl.config import ConfigError, parse_override
from memrl.prompts import record_prompt

if TYPE_CHECKING:
    from memrl.tasks.base import Task
    from memrl.types import Record

# torch, transformers and math-verify are imported where they are used, so that building the
# ``memrl eval`` argument parser (memrl --help) stays instant.

EXIT_USAGE_ERROR = 2  # the model, data or options cannot be used (message on stderr)
ENGINES = ("auto", "hf", "vllm")
# Settings that have their own option; a --task-option may not set them a second time.
_OWN_OPTIONS = {
    "seed": "--seed",
    "path": "--data-path",
    "eval_path": "--data-path",
    "question_field": "--question-field",
    "answer_field": "--answer-field",
}
PASS_AT_K_ESTIMATOR = (
    "unbiased estimator 1 - C(n-c, k)/C(n, k) (Chen et al. 2021) with n = k samples per "
    "problem: 1 if any sample is correct"
)


class EvalSettingsError(ValueError):
    """An evaluation option is invalid; the message names the option and value."""


# --------------------------------------------------------------------------------------------
# Answer extraction and scoring


@dataclass(frozen=True)
class ScoredAnswer:
    """The answer read from one completion and whether it is correct.

    ``source`` says where the answer was found: ``"xml"`` (``<answer>`` tag), ``"boxed"``,
    ``"free_text"`` (math-verify extraction), ``"equation"`` (Countdown) or ``"none"``.
    """

    extracted: Optional[str]
    source: str
    correct: bool


def _free_text_answer(text: str, timeout_s: float) -> Optional[str]:
    """The answer math-verify extracts from free text (its matched string), or None."""
    from math_verify import parse

    # math-verify times out with signal.alarm, which only works in the main thread.
    in_main = threading.current_thread() is threading.main_thread()
    timeout = max(1, math.ceil(timeout_s)) if in_main else None
    parsed = parse(text, parsing_timeout=timeout)
    return next((item for item in parsed if isinstance(item, str) and item.strip()), None)


def extract_answer(completion: str, *, timeout_s: float = 5.0) -> tuple[Optional[str], str]:
    """(answer, source) of a completion: the first non-empty of the ``<answer>`` content, the
    last ``\\boxed{}`` content and math-verify's free-text extraction; ``(None, "none")`` when
    none gives anything. ``timeout_s`` bounds math-verify's parse (main thread only)."""
    from memrl.verify import extract_boxed, extract_xml_answer

    if "<answer>" in completion:
        answer = extract_xml_answer(completion)
        if answer:
            return answer, "xml"
    boxed = extract_boxed(completion)
    if boxed and boxed.strip():
        return boxed.strip(), "boxed"
    free = _free_text_answer(completion, timeout_s) if completion.strip() else None
    if free is not None:
        return free, "free_text"
    return None, "none"


def _countdown_score(completion: str, record: Record) -> ScoredAnswer:
    from memrl.rewards.countdown import equation_score, extract_equation

    numbers, target = record.meta.get("numbers"), record.meta.get("target", record.answer)
    if numbers is None:
        raise ValueError(
            f"record {record.id!r} has no meta['numbers']: the Countdown check needs the numbers"
        )
    equation = extract_equation(completion)
    correct = equation_score(completion, numbers, Fraction(str(target))) == 1.0
    return ScoredAnswer(equation or None, "equation" if equation else "none", correct)


def score_completions(
    task: Task, records: Sequence[Record], completions: Sequence[str], *, timeout_s: float = 5.0
) -> list[ScoredAnswer]:
    """Score ``completions[i]`` against ``records[i]``: Countdown-style tasks (correctness
    reward ``countdown_equation``) by their equation check, all others by answer extraction
    (:func:`extract_answer`) and math-verify. ``timeout_s`` bounds each math-verify call."""
    from memrl.verify import check_answers

    if len(records) != len(completions):
        raise ValueError(f"{len(completions)} completions for {len(records)} records")
    if task.correctness_reward == "countdown_equation":
        return [_countdown_score(text, record) for text, record in zip(completions, records)]
    found = [extract_answer(text, timeout_s=timeout_s) for text in completions]
    pairs = {i: (answer, records[i].answer) for i, (answer, _) in enumerate(found) if answer}
    matches = check_answers(
        [pred for pred, _ in pairs.values()],
        [gold for _, gold in pairs.values()],
        mode="math",
        timeout_s=timeout_s,
    )
    correct = dict(zip(pairs, matches))
    return [
        ScoredAnswer(answer, source, correct.get(i, False))
        for i, (answer, source) in enumerate(found)
    ]


# --------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate (Chen et al. 2021) from ``n`` samples of which ``c`` are
    correct: ``1 - C(n - c, k) / C(n, k)``, the chance that ``k`` of the ``n`` samples drawn
    without replacement include a correct one. Needs ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# --------------------------------------------------------------------------------------------
# Settings and results


@dataclass
class EvalSettings:
    """What to evaluate and how to decode.

    ``limit``: the first N records of the split (None: all). Accuracy is greedy;
    ``temperature``/``top_p`` apply only to the ``pass_k`` samples drawn when ``pass_k > 1``.
    ``max_tokens``: completion tokens. ``batch_size``: completions per engine call.
    ``seed`` seeds the task's generator, the k-shot draw and the samples. ``engine``:
    ``"auto"`` (vLLM on a GPU, else transformers), ``"hf"`` or ``"vllm"``. ``data_path``: a
    local JSONL/Parquet file for the split (the task's ``path`` for train, ``eval_path`` for
    test), with ``question_field``/``answer_field`` naming its fields. ``task_options``: more
    keyword arguments of the task's constructor (e.g. arith ``min_steps``).
    """

    task: str
    split: str = "test"
    limit: Optional[int] = None
    pass_k: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    num_shots: int = 0
    seed: int = 0
    batch_size: int = 64
    engine: str = "auto"
    data_path: Optional[str] = None
    question_field: Optional[str] = None
    answer_field: Optional[str] = None
    task_options: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 5.0  # per math-verify check

    def __post_init__(self) -> None:
        from memrl.tasks import TASKS

        if self.task not in TASKS:
            raise EvalSettingsError(
                f"--task {self.task!r}: valid tasks are {', '.join(sorted(TASKS))}"
            )
        checks = [
            ("--limit", self.limit, self.limit is None or self.limit >= 1, ">= 1"),
            ("--pass-k", self.pass_k, self.pass_k >= 1, ">= 1"),
            ("--temperature", self.temperature, self.temperature > 0, "> 0"),
            ("--top-p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("--max-tokens", self.max_tokens, self.max_tokens >= 1, ">= 1"),
            ("--num-shots", self.num_shots, self.num_shots >= 0, ">= 0"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("timeout_s", self.timeout_s, self.timeout_s > 0, "> 0"),
        ]
        for option, value, ok, rule in checks:
            if not ok:
                raise EvalSettingsError(f"{option} = {value}: must be {rule}")
        if self.engine not in ENGINES:
            raise EvalSettingsError(f"--engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        for key in self.task_options:
            if key in _OWN_OPTIONS:
                raise EvalSettingsError(
                    f"--task-option {key}=...: set it with {_OWN_OPTIONS[key]} instead"
                )

    def decoding(self) -> dict[str, Any]:
        """The decoding settings recorded with a result."""
        return {
            "greedy": True,
            "pass_k": self.pass_k,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "num_shots": self.num_shots,
            "batch_size": self.batch_size,
        }


@dataclass
class SampleResult:
    """One completion, its extracted answer and its correctness."""

    completion: str
    extracted: Optional[str]
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
    extracted: Optional[str]
    extracted_from: str
    correct: bool
    completion_tokens: int
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def num_correct_samples(self) -> int:
        return sum(sample.correct for sample in self.samples)


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`. ``model`` is the name given, ``model_path`` what was
    loaded; ``engine`` the engine actually used (``"hf"`` or ``"vllm"``)."""

    model: str
    model_path: str
    task: str
    split: str
    engine: str
    settings: EvalSettings
    problems: list[ProblemResult]
    elapsed_s: float

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
        """Greedy accuracy: the fraction of problems answered correctly."""
        return self.num_correct / self.num_total

    @property
    def mean_completion_tokens(self) -> float:
        return sum(p.completion_tokens for p in self.problems) / self.num_total

    @property
    def pass_at_k(self) -> Optional[float]:
        """Mean pass@k over problems (None without sampling, i.e. ``pass_k == 1``)."""
        k = self.settings.pass_k
        if k == 1:
            return None
        values = [pass_at_k(k, p.num_correct_samples, k) for p in self.problems]
        return sum(values) / len(values)

    @property
    def sample_accuracy(self) -> Optional[float]:
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


def write_result(result: EvalResult, path: str | Path) -> Path:
    """Write ``result.to_json()`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    return path


def format_table(result: EvalResult) -> str:
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
    width = max(len(name) for name, _ in rows)
    header = (
        f"{result.task} ({result.split}), {result.num_total} problems, {s.num_shots}-shot, "
        f"model {result.model} [{result.engine}], {result.elapsed_s:.1f} s"
    )
    lines = [header, f"{'metric':<{width}}  value"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Running an evaluation


def build_eval_task(settings: EvalSettings) -> Task:
    """The task of ``settings``, reading ``data_path`` for its split when given."""
    from memrl.tasks import make_task

    kwargs: dict[str, Any] = {**settings.task_options, "seed": settings.seed}
    if settings.data_path is not None:
        kwargs["path" if settings.split == "train" else "eval_path"] = settings.data_path
    fields = {"question_field": settings.question_field, "answer_field": settings.answer_field}
    for key, value in fields.items():
        if value is None:
            continue
        if settings.task == "countdown":
            raise EvalSettingsError(
                f"--{key.replace('_', '-')}: Countdown files have no question/answer fields; "
                "name theirs with --task-option numbers_field=... / target_field=..."
            )
        kwargs[key] = value
    try:
        task = make_task(settings.task, **kwargs)
    except TypeError as exc:  # an option the task's constructor does not take
        raise EvalSettingsError(f"task {settings.task!r} rejected an option: {exc}") from exc
    except ValueError as exc:  # an option value the task refuses (the message names it)
        raise EvalSettingsError(str(exc)) from exc
    if settings.num_shots > len(task.exemplars):
        raise EvalSettingsError(
            f"--num-shots {settings.num_shots}: task {task.name!r} has "
            f"{len(task.exemplars)} exemplars"
        )
    return task


def eval_records(task: Task, settings: EvalSettings) -> list[Record]:
    """The first ``settings.limit`` records (all when None) of the task's split."""
    try:
        records = task.dataset(settings.split)
    except ValueError as exc:  # unknown split, or a bad row of a local file (named)
        raise EvalSettingsError(str(exc)) from exc
    count = len(records) if settings.limit is None else min(settings.limit, len(records))
    if count == 0:
        raise EvalSettingsError(f"task {task.name!r}, split {settings.split!r} has no records")
    return list(records[:count])


def resolve_model(name_or_path: str) -> str:
    """A loadable model: the folder itself, the local snapshot of a cached hub id, or (hub
    reachable) the hub id for the engine to download. Raises ModelUnavailableError otherwise,
    without the hub client's slow retries."""
    from memrl.model.loading import _hub_offline, _hub_reachable, _looks_like_path, _unavailable

    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return str(folder)
    if _looks_like_path(name_or_path):
        raise _unavailable(name_or_path, f"the folder {folder} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except OSError as cache_miss:  # LocalEntryNotFoundError and friends
        if _hub_offline():
            raise _unavailable(
                name_or_path, "it is not in the local cache and HF_HUB_OFFLINE is set"
            ) from cache_miss
        if not _hub_reachable():
            raise _unavailable(
                name_or_path, "it is not in the local cache and the hub cannot be reached"
            ) from cache_miss
    return name_or_path


def _build_engine(model_path: str, settings: EvalSettings) -> tuple[Any, str]:
    from memrl.rollout.engine import make_engine, resolve_engine_kind

    kind = resolve_engine_kind(settings.engine)
    # num_threads=None: leave torch's thread count to the caller (the CLI owns the machine).
    options: dict[str, Any] = {"num_threads": None} if kind == "hf" else {}
    return make_engine(kind, model_path, seed=settings.seed, **options), kind


def _generate(
    engine: Any,
    prompts: Sequence[str],
    record_ids: Sequence[str],
    settings: EvalSettings,
    *,
    greedy: bool,
) -> list[list[tuple[str, int]]]:
    """Per prompt, its (completion text, completion tokens) list: one greedy completion, or
    ``pass_k`` samples. Calls hold at most ``batch_size`` completions (at least one prompt)."""
    from memrl.rollout.engine import SamplingSettings

    group = 1 if greedy else settings.pass_k
    per_call = max(1, settings.batch_size // group)
    out: list[list[tuple[str, int]]] = []
    for start in range(0, len(prompts), per_call):
        sampling = SamplingSettings(
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_tokens,
            num_generations=group,
            seed=settings.seed + start,  # per call, so every batch samples reproducibly
        )
        batch = engine.generate(
            list(prompts[start : start + per_call]),
            list(record_ids[start : start + per_call]),
            sampling,
            greedy=greedy,
        )
        lengths = batch.completion_lengths.tolist()
        rows = list(zip(batch.texts, (int(n) for n in lengths)))
        out += [rows[i : i + group] for i in range(0, len(rows), group)]
    return out


def evaluate(model: str, settings: EvalSettings, *, engine: Any = None) -> EvalResult:
    """Evaluate ``model`` (a folder or hub id) on ``settings``; see the module docstring.

    ``engine``: an already built :class:`memrl.rollout.engine.GenerationEngine` to use instead
    of loading ``model`` (``model`` is then only recorded). Raises ModelUnavailableError when
    the model cannot be loaded, EvalSettingsError / ValueError for unusable options or data.
    """
    started = time.perf_counter()
    task = build_eval_task(settings)
    records = eval_records(task, settings)
    if engine is None:
        model_path = resolve_model(model)
        engine, kind = _build_engine(model_path, settings)
    else:
        model_path, kind = model, type(engine).__name__
    prompts = [
        record_prompt(task, engine.tokenizer, r, num_shots=settings.num_shots, seed=settings.seed)
        for r in records
    ]
    ids = [r.id for r in records]
    greedy = [rows[0] for rows in _generate(engine, prompts, ids, settings, greedy=True)]
    scored = score_completions(task, records, [t for t, _ in greedy], timeout_s=settings.timeout_s)
    problems = [
        ProblemResult(
            id=r.id, question=r.question, gold=r.answer, completion=text,
            extracted=s.extracted, extracted_from=s.source, correct=s.correct,
            completion_tokens=tokens,
        )
        for r, (text, tokens), s in zip(records, greedy, scored)
    ]
    if settings.pass_k > 1:
        sampled = _generate(engine, prompts, ids, settings, greedy=False)
        flat_records = [r for r in records for _ in range(settings.pass_k)]
        flat = [row for rows in sampled for row in rows]
        flat_scores = score_completions(
            task, flat_records, [t for t, _ in flat], timeout_s=settings.timeout_s
        )
        for i, ((text, tokens), s) in enumerate(zip(flat, flat_scores)):
            problems[i // settings.pass_k].samples.append(
                SampleResult(text, s.extracted, s.source, s.correct, tokens)
            )
    return EvalResult(
        model=model, model_path=model_path, task=task.name, split=settings.split, engine=kind,
        settings=settings, problems=problems, elapsed_s=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------
# Command line


def default_output_path(model: str, task: str, split: str) -> Path:
    """``eval_<task>_<split>.json`` in the model folder when ``model`` is one, else the cwd."""
    name = f"eval_{task}_{split}.json"
    folder = Path(model).expanduser()
    return folder / name if folder.is_dir() else Path.cwd() / name


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``memrl eval`` arguments (their dests are what :func:`main_eval` reads)."""
    # The defaults, stated once in EvalSettings (read without building one: no task import).
    d = argparse.Namespace(**{
        f.name: f.default for f in dataclasses.fields(EvalSettings)
        if f.default is not dataclasses.MISSING
    })
    parser.add_argument("model", help="model folder or Hugging Face hub id")
    parser.add_argument(
        "--task", required=True,
        help="task name, e.g. arith, gsm8k, math500, aime24, countdown (a wrong name lists all)",
    )
    parser.add_argument("--split", default=d.split, help="split to evaluate (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    parser.add_argument(
        "--pass-k", type=int, default=d.pass_k,
        help="also sample K completions per problem and report pass@K (default: %(default)s)",
    )
    parser.add_argument("--temperature", type=float, default=d.temperature,
                        help="sampling temperature of the pass@k samples (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=d.top_p,
                        help="top-p of the pass@k samples (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens,
                        help="completion tokens (default: %(default)s)")
    parser.add_argument("--num-shots", type=int, default=d.num_shots,
                        help="k-shot exemplars in each prompt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="completions per engine call (default: %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, default=d.engine,
                        help="auto: vLLM on a GPU, else transformers (default: %(default)s)")
    parser.add_argument("--data-path", default=None,
                        help="local JSONL/Parquet file with the split's problems")
    parser.add_argument("--question-field", default=None, help="question field of --data-path")
    parser.add_argument("--answer-field", default=None, help="answer field of --data-path")
    parser.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="task constructor option, value parsed as YAML (e.g. min_steps=2); repeatable",
    )
    parser.add_argument("--out", default=None,
                        help="result JSON (default: eval_<task>_<split>.json in the model folder "
                        "if it is one, else the current folder)")


def _parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        if "." in key:
            raise EvalSettingsError(f"--task-option {item!r}: expected key=value, no dots")
        options[key] = value
    return options


_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(EvalSettings))


def main_eval(args: Optional[argparse.Namespace] = None, **kwargs: Any) -> int:
    """Run ``memrl eval`` from parsed arguments (:func:`add_eval_arguments`) and/or keyword
    arguments of the same names (``model``, ``task``, ``out``, ``task_option`` as a list of
    ``key=value`` strings, ...; keywords win). Prints the table, writes the JSON; returns 0,
    or 2 with a message on stderr when the model, data or options cannot be used."""
    from memrl.model.loading import ModelUnavailableError
    from memrl.tasks.hub import DatasetUnavailableError

    options = {**(vars(args) if args is not None else {}), **kwargs}
    try:
        task_options = dict(options.get("task_options") or {})
        task_options.update(_parse_task_options(options.get("task_option") or []))
        chosen = {
            name: options[name]
            for name in _SETTING_NAMES
            if options.get(name) is not None and name != "task_options"
        }
        settings = EvalSettings(**chosen, task_options=task_options)
        model = options["model"]
        result = evaluate(model, settings)
    except (
        ModelUnavailableError,
        DatasetUnavailableError,
        FileNotFoundError,
        ConfigError,
        EvalSettingsError,
    ) as exc:
        print(f"memrl eval: {exc}", file=sys.stderr)
        return EXIT_USAGE_ERROR
    out = options.get("out") or default_output_path(model, result.task, result.split)
    path = write_result(result, out)
    print(format_table(result))
    print(f"wrote {path}")
    return 0
