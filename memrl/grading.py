"""The extractive-match grader: the answer read from free text, checked with math-verify.

Answers are read as the paper's LightEval "extractive match" does (docs/method.md,
"Evaluation"), in this order of preference:

1. the content of the XML ``<answer>`` tag (when the completion has one),
2. else the last ``\\boxed{}``,
3. else math-verify's own extraction from the whole completion (LaTeX, then plain
   expressions; e.g. the 19 of "The answer is 19.").

The first non-empty candidate is the answer and is checked against the gold answer with
:func:`memrl.verify.check_answers` (exact for plain numbers, math-verify otherwise); a
completion with no candidate is unparsed, and wrong. A task with another notion of a correct
answer checks it itself (:meth:`memrl.tasks.base.Task.score_answers`; e.g. Countdown's equation
check: the equation in ``<answer>`` must use each given number once and hit the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memrl.verify import check_answers, extract_boxed, extract_free_text_answers, extract_xml_answer

if TYPE_CHECKING:
    from memrl.types import Record


@dataclass(frozen=True)
class ScoredAnswer:
    """The answer read from one completion and whether it is correct.

    ``source`` says where the answer was found: ``"xml"`` (``<answer>`` tag), ``"boxed"``,
    ``"free_text"`` (math-verify extraction), ``"equation"`` (Countdown) or ``"none"``.
    """

    extracted: str | None
    source: str
    correct: bool


def extract_answers(
    completions: Sequence[str], *, timeout_s: float = 5.0, batch_timeout_s: float | None = None
) -> list[tuple[str | None, str]]:
    """(answer, source) of each completion: the first non-empty of the ``<answer>`` content, the
    last ``\\boxed{}`` content and math-verify's free-text extraction; ``(None, "none")`` when
    none gives anything. The free-text extractions run as one batch of
    :func:`memrl.verify.extract_free_text_answers`: about ``timeout_s`` per completion and
    ``batch_timeout_s`` (None: its default) for the batch, in any thread."""
    found: list[tuple[str | None, str]] = [(None, "none")] * len(completions)
    free_text: list[int] = []
    for i, completion in enumerate(completions):
        answer = extract_xml_answer(completion) if "<answer>" in completion else ""
        boxed = extract_boxed(completion) if not answer else None
        if answer:
            found[i] = (answer, "xml")
        elif boxed and boxed.strip():
            found[i] = (boxed.strip(), "boxed")
        else:
            free_text.append(i)
    answers = extract_free_text_answers([completions[i] for i in free_text], timeout_s=timeout_s,
                                        batch_timeout_s=batch_timeout_s)
    for i, answer in zip(free_text, answers):
        if answer is not None:
            found[i] = (answer, "free_text")
    return found


def check_extracted_answers(
    records: Sequence[Record], completions: Sequence[str], *, timeout_s: float = 5.0
) -> list[ScoredAnswer]:
    """The answer of each completion (:func:`extract_answers`) checked against its record's
    gold answer with math-verify (``timeout_s`` per item): the default
    :meth:`memrl.tasks.base.Task.score_answers`."""
    found = extract_answers(completions, timeout_s=timeout_s)
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
