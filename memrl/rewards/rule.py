"""The rule rewards of Memory-R+ (the "R1" baseline), with the official code's exact values.

Each reward is ``fn(batch: RewardBatch, **kwargs) -> list[float]``, one value per completion.
The format regexes are applied with ``re.match`` and without DOTALL, as in the official code, so
the strict and soft format rewards fire only for single-line reasoning (docs/method.md, "Rule
rewards").
"""

from __future__ import annotations

import re

from memrl.rewards.batch import RewardBatch
from memrl.verify import CheckMode, check_answers, extract_boxed, extract_xml_answer

# The check of a correctness reward configured without arguments: the paper's GSM8K string match
# (a run's plan passes task.verifier instead), each item given at most this many seconds.
DEFAULT_CHECK: CheckMode = "exact"
CHECK_TIMEOUT_S = 5.0

_STRICT_FORMAT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_SOFT_FORMAT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def predicted_answer(text: str, mode: CheckMode) -> str:
    """The answer a completion gives, as the correctness check reads it.

    The XML answer (:func:`extract_xml_answer`); in ``"math"`` mode, when that is empty or the
    completion has no ``<answer>`` tag, the content of the last ``\\boxed{}`` if there is one.
    """
    answer = extract_xml_answer(text)
    if mode == "math" and (not answer or "<answer>" not in text):
        boxed = extract_boxed(text)
        if boxed is not None:
            return boxed
    return answer


def answer_correctness(batch: RewardBatch, *, mode: CheckMode, timeout_s: float) -> list[bool]:
    """Whether each completion's predicted answer matches its gold answer.

    ``mode="exact"``: stripped string equality (the paper's GSM8K check); ``"math"``: numeric or
    math-verify equivalence, at most about ``timeout_s`` seconds per item (see memrl.verify).
    """
    preds = [predicted_answer(text, mode) for text in batch.completions]
    return check_answers(preds, list(batch.answers), mode=mode, timeout_s=timeout_s)


def correctness_reward(
    batch: RewardBatch, *, mode: CheckMode = DEFAULT_CHECK, timeout_s: float = CHECK_TIMEOUT_S
) -> list[float]:
    """1.0 if the predicted answer matches the gold answer, else 0.0 (see answer_correctness)."""
    return [1.0 if ok else 0.0 for ok in answer_correctness(batch, mode=mode, timeout_s=timeout_s)]


def integer_reward(batch: RewardBatch) -> list[float]:
    """0.5 if the XML answer is all digits (``str.isdigit``, as the official code), else 0.0."""
    return [0.5 if extract_xml_answer(text).isdigit() else 0.0 for text in batch.completions]


def strict_format_reward(batch: RewardBatch) -> list[float]:
    """0.5 if the whole completion matches the strict format regex, else 0.0.

    The format is ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n`` with each
    ``…`` on one line; ``$`` also accepts one extra newline at the very end (``re`` rules).
    """
    return [0.5 if _STRICT_FORMAT.match(text) else 0.0 for text in batch.completions]


def soft_format_reward(batch: RewardBatch) -> list[float]:
    """0.5 if the text starts with ``<reasoning>…</reasoning>`` then ``<answer>…</answer>``.

    Only whitespace may separate the two; ``…`` cannot span lines, so multi-line reasoning gets
    0.0 (as in the official code).
    """
    return [0.5 if _SOFT_FORMAT.match(text) else 0.0 for text in batch.completions]


def xml_count(text: str) -> float:
    """Tag-count score of one completion, up to 0.5 (operations in the official code's order).

    +0.125 per tag line found exactly once; the ``<answer>`` and ``</answer>`` terms each lose
    0.001 per character after the closing tag (the second one forgives one trailing newline).
    """
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def xmlcount_reward(batch: RewardBatch) -> list[float]:
    """:func:`xml_count` of each completion."""
    return [xml_count(text) for text in batch.completions]
