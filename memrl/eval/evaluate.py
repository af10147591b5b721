"""The evaluation loop: prompts as in training, greedy (and sampled) completions, grading.

Accuracy is greedy. With ``pass_k > 1`` each problem also gets ``k`` sampled completions
(``temperature``, ``top_p``) and pass@k is the unbiased estimator of Chen et al. (2021),
``1 - C(n - c, k) / C(n, k)``, with ``n = k`` samples drawn here, so per problem it is 1 when
any of the ``k`` samples is correct, else 0; the mean of ``c / n`` is reported alongside as
the sampled accuracy. Prompts are built exactly as in training (the task's system prompt,
``num_shots`` exemplars, the tokenizer's chat template).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memrl.eval.graders import grade
from memrl.eval.results import BenchmarkResult, ProblemResult, SampleResult
from memrl.eval.settings import EvalSettings, build_eval_task, check_num_shots, eval_records
from memrl.prompts import record_prompt

if TYPE_CHECKING:
    from memrl.tasks.base import Task


def _build_engine(model_path: str, settings: EvalSettings) -> tuple[Any, str]:
    from memrl.rollout.factory import make_engine, resolve_engine_kind

    kind = resolve_engine_kind(settings.engine)
    # num_threads=None: leave torch's thread count to the caller (the CLI owns the machine).
    return make_engine(kind, model_path, seed=settings.seed, num_threads=None), kind


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


def evaluate(model: str, settings: EvalSettings, *, engine: Any = None, task: Task | None = None,
             run: dict[str, Any] | None = None) -> BenchmarkResult:
    """Evaluate ``model`` (a folder or hub id) on ``settings``; see the module docstring.

    ``engine``: an already built :class:`memrl.rollout.engine.GenerationEngine` to use instead
    of loading ``model`` (``model`` is then only recorded). ``task``: an already built task
    (a training run's, :mod:`memrl.eval.from_run`) instead of the one ``settings`` name;
    ``run``: what the settings took from that run, recorded with the result. Raises ModelUnavailableError when the model
    cannot be loaded, EvalSettingsError / ValueError for unusable options or data.
    """
    started = time.perf_counter()
    if task is None:
        task = build_eval_task(settings)
    else:
        check_num_shots(task, settings)
    records = eval_records(task, settings)
    if engine is None:
        from memrl.model.loading import locate_model

        source = locate_model(model)
        model_path = model if source.kind == "hub" else source.location  # the engine downloads a hub id
        engine, kind = _build_engine(model_path, settings)
    else:
        model_path, kind = model, type(engine).__name__
    prompts = [
        record_prompt(task, engine.tokenizer, r, num_shots=settings.num_shots, seed=settings.seed)
        for r in records
    ]
    ids = [r.id for r in records]

    def score(recs: Sequence[Any], rows: Sequence[tuple[str, int]]):
        return grade(settings.grader, task, recs, [t for t, _ in rows], [n for _, n in rows],
                     verifier=settings.verifier, max_tokens=settings.max_tokens,
                     timeout_s=settings.timeout_s)

    greedy = [rows[0] for rows in _generate(engine, prompts, ids, settings, greedy=True)]
    problems = [
        ProblemResult(
            id=r.id, question=r.question, gold=r.answer, completion=text,
            extracted=s.extracted, extracted_from=s.source, correct=s.correct,
            completion_tokens=tokens,
        )
        for r, (text, tokens), s in zip(records, greedy, score(records, greedy))
    ]
    if settings.pass_k > 1:
        sampled = _generate(engine, prompts, ids, settings, greedy=False)
        flat_records = [r for r in records for _ in range(settings.pass_k)]
        flat = [row for rows in sampled for row in rows]
        for i, ((text, tokens), s) in enumerate(zip(flat, score(flat_records, flat))):
            problems[i // settings.pass_k].samples.append(
                SampleResult(text, s.extracted, s.source, s.correct, tokens)
            )
    return BenchmarkResult(
        model=model, model_path=model_path, task=task.name, split=settings.split, engine=kind,
        settings=settings, problems=problems, elapsed_s=time.perf_counter() - started, run=run,
    )
