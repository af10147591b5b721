"""Countdown rewards (docs/method.md, "Rule rewards"): format and equation.

The equation is evaluated by a small recursive-descent parser over exact fractions — never
Python ``eval`` — that accepts only numbers, ``+ - * /``, parentheses and whitespace. Inputs
longer than ``MAX_EQUATION_CHARS`` are rejected before parsing, which also bounds the parser's
recursion depth and the size of every intermediate number (there is no exponentiation).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from memrl.rewards.batch import RewardBatch

MAX_EQUATION_CHARS = 200
TOLERANCE = Fraction(1, 100_000)  # |value - target| must be below 1e-5

_TOKEN = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?|\.[0-9]+)|([-+*/()]))")


class EquationError(ValueError):
    """The text is not an arithmetic expression this parser accepts."""


def tokenize(text: str) -> list[str]:
    """Split an expression into number and operator tokens; EquationError on anything else."""
    tokens: list[str] = []
    position = 0
    end = len(text.rstrip())
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            raise EquationError(f"unexpected character {text[position:].lstrip()[:1]!r}")
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
    return tokens


def _is_number(token: str) -> bool:
    return token[0] not in "+-*/()"


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := ('+'|'-') unary | number | '(' expr ')'"""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise EquationError("expression ends too early")
        self.position += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.unary()
            else:
                divisor = self.unary()
                if divisor == 0:
                    raise ZeroDivisionError("division by zero")
                value /= divisor
        return value

    def unary(self) -> Fraction:
        token = self.take()
        if token == "-":
            return -self.unary()
        if token == "+":
            return self.unary()
        if token == "(":
            value = self.expression()
            if self.take() != ")":
                raise EquationError("missing ')'")
            return value
        if _is_number(token):
            return Fraction(token)
        raise EquationError(f"unexpected {token!r}")


def evaluate_equation(text: str) -> Fraction:
    """The exact value of an arithmetic expression over numbers, ``+ - * /`` and parentheses.

    Raises EquationError for anything else (or text over MAX_EQUATION_CHARS characters) and
    ZeroDivisionError for a division by zero.
    """
    return _evaluate_tokens(_checked_tokens(text))


def _checked_tokens(text: str) -> list[str]:
    if len(text) > MAX_EQUATION_CHARS:
        raise EquationError(f"expression longer than {MAX_EQUATION_CHARS} characters")
    return tokenize(text)


def _evaluate_tokens(tokens: list[str]) -> Fraction:
    parser = _Parser(tokens)
    value = parser.expression()
    if parser.peek() is not None:
        raise EquationError(f"unexpected {parser.peek()!r} after a complete expression")
    return value


def extract_equation(completion: str) -> str | None:
    """The text between the last ``<answer>`` and the next ``</answer>``, stripped (None if
    either tag is missing)."""
    start = completion.rfind("<answer>")
    if start < 0:
        return None
    start += len("<answer>")
    end = completion.find("</answer>", start)
    return None if end < 0 else completion[start:end].strip()


def is_countdown_format(completion: str) -> bool:
    """True iff the text (surrounding whitespace aside) is ``<think>…</think>`` then
    ``<answer>…</answer>``, with one tag of each kind and only whitespace between the blocks."""
    text = completion.strip()
    if any(text.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        return False
    if not (text.startswith("<think>") and text.endswith("</answer>")):
        return False
    between = text[text.index("</think>") + len("</think>") : text.index("<answer>")]
    return text.index("</think>") < text.index("<answer>") and not between.strip()


def equation_score(completion: str, numbers: Sequence[int], target: Fraction) -> float:
    """1.0 iff the completion's equation uses each of ``numbers`` exactly once (as its number
    literals) and evaluates to ``target`` within 1e-5; 0.0 otherwise (also for malformed
    equations and division by zero)."""
    equation = extract_equation(completion)
    if not equation:
        return 0.0
    try:
        tokens = _checked_tokens(equation)
        literals = Counter(Fraction(t) for t in tokens if _is_number(t))
        if literals != Counter(Fraction(n) for n in numbers):
            return 0.0
        value = _evaluate_tokens(tokens)
    except (EquationError, ZeroDivisionError):
        return 0.0
    return 1.0 if abs(value - target) < TOLERANCE else 0.0


def _numbers_and_target(batch: RewardBatch, i: int) -> tuple[list[int], Fraction]:
    meta = batch.meta(i)
    if "numbers" not in meta:
        raise ValueError(
            f"countdown_equation: completion {i} has no meta['numbers'] (the given numbers); "
            "is the task a Countdown task?"
        )
    raw_target: Any = meta.get("target", batch.answers[i])
    try:
        target = Fraction(str(raw_target).strip())
    except ValueError:
        raise ValueError(
            f"countdown_equation: completion {i} has a non-numeric target {raw_target!r}"
        ) from None
    return list(meta["numbers"]), target


def countdown_format_reward(batch: RewardBatch, **kwargs: Any) -> list[float]:
    """1.0 per completion that is ``<think>…</think>`` then ``<answer>…</answer>``, else 0.0."""
    return [1.0 if is_countdown_format(text) else 0.0 for text in batch.completions]


def countdown_equation_reward(batch: RewardBatch, **kwargs: Any) -> list[float]:
    """1.0 per completion whose ``<answer>`` equation uses each of ``meta["numbers"]`` exactly
    once and evaluates to ``meta["target"]`` (or the gold answer) within 1e-5, else 0.0."""
    scores = []
    for i, completion in enumerate(batch.completions):
        numbers, target = _numbers_and_target(batch, i)
        scores.append(equation_score(completion, numbers, target))
    return scores
