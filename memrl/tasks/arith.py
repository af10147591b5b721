"""Arith: the embedded default task — multi-step arithmetic word problems in GSM8K style,
generated on demand, so it runs with no dataset hub.

Every problem is a start value changed by 1..n operations, told in a few fixed templates with a
small vocabulary (six names, six objects, a handful of verbs) that a tiny BPE model can learn.
``meta["solution"]`` holds a GSM8K-style worked solution (for a supervised warm start), e.g.
"Tom has 12 apples. He buys 7 more, so 12 + 7 = 19."; ``meta["start"]`` and ``meta["steps"]``
hold the numbers, so the answer can be recomputed.

Records are deterministic per (seed, split, index). Train and test are disjoint: a problem
belongs to the test split iff its question hashes into the held-out bucket (``held_out``).
The default difficulty (one addition or subtraction of numbers up to 50) is learnable by a
model of a few million parameters; more steps and ``*``/``/`` make it harder.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from memrl.tasks.base import GeneratedRecords, Task, file_field_options, held_out
from memrl.tasks.files import load_records_file
from memrl.types import Record

if TYPE_CHECKING:
    from memrl.config import DataConfig, TaskConfig

NAMES = (
    ("Tom", "he"), ("Sam", "he"), ("Ben", "he"), ("Ann", "she"), ("Mia", "she"), ("Lily", "she")
)
OBJECTS = ("apples", "books", "coins", "cards", "pens", "eggs")
ADD_VERBS = ("buys", "finds", "gets")
OPERATIONS = ("+", "-", "*", "/")
MAX_ATTEMPTS = 10_000  # draws per record before giving up (only hit by impossible settings)


def apply_operation(value: int, op: str, operand: int) -> int:
    """``value op operand`` for a step whose result is a whole number."""
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    if op == "/":
        if value % operand:
            raise ValueError(f"{value} / {operand} is not a whole number")
        return value // operand
    raise ValueError(f"unknown operation {op!r}; use one of {OPERATIONS}")


def _possible(op: str, value: int, max_factor: int) -> bool:
    if op == "-":
        return value >= 3  # take at least two, leave at least one
    if op == "/":
        return any(value % k == 0 for k in range(2, max_factor + 1))
    return True


def _step_text(
    rng: random.Random, op: str, value: int, max_value: int, max_factor: int,
    pronoun: str, friend: str, obj: str,
) -> tuple[int, str, str]:
    """Draw one step: (operand, question sentence, solution sentence without the equation)."""
    subject = pronoun.capitalize()
    if op == "+":
        operand = rng.randint(2, max_value)
        verb = rng.choice(ADD_VERBS)
        return (
            operand, f"{subject} {verb} {operand} more {obj}.", f"{subject} {verb} {operand} more"
        )
    if op == "-":
        operand = rng.randint(2, min(value - 1, max_value))
        if rng.random() < 0.5:
            return (
                operand,
                f"{subject} gives {operand} {obj} to {friend}.",
                f"{subject} gives {operand} to {friend}",
            )
        verb = rng.choice(("sells", "loses"))
        return operand, f"{subject} {verb} {operand} {obj}.", f"{subject} {verb} {operand}"
    if op == "*":
        operand = rng.randint(2, max_factor)
        return (
            operand,
            f"Then {pronoun} has {operand} times as many {obj}.",
            f"Then {pronoun} has {operand} times as many",
        )
    operand = rng.choice([k for k in range(2, max_factor + 1) if value % k == 0])
    return (
        operand,
        f"{subject} puts them into {operand} equal groups and keeps one group.",
        f"{subject} keeps one of {operand} groups",
    )


def generate_problem(
    rng: random.Random,
    *,
    min_steps: int,
    max_steps: int,
    max_value: int,
    operations: Sequence[str],
    max_factor: int,
) -> tuple[str, int, dict] | None:
    """One problem drawn with ``rng``: (question, answer, meta); None when the drawn start
    value leaves no allowed operation (the caller draws again)."""
    name, pronoun = rng.choice(NAMES)
    friend = rng.choice([other for other, _ in NAMES if other != name])
    obj = rng.choice(OBJECTS)
    start = value = rng.randint(2, max_value)
    question = [f"{name} has {start} {obj}."]
    solution = [f"{name} has {start} {obj}."]
    steps = []
    for _ in range(rng.randint(min_steps, max_steps)):
        allowed = [op for op in operations if _possible(op, value, max_factor)]
        if not allowed:
            return None
        op = rng.choice(allowed)
        operand, asked, told = _step_text(
            rng, op, value, max_value, max_factor, pronoun, friend, obj
        )
        result = apply_operation(value, op, operand)
        question.append(asked)
        solution.append(f"{told}, so {value} {op} {operand} = {result}.")
        steps.append([op, operand])
        value = result
    question.append(f"How many {obj} does {name} have now?")
    meta = {"solution": " ".join(solution), "start": start, "steps": steps}
    return " ".join(question), value, meta


class ArithTask(Task):
    """Procedural word problems; sizes are record counts, generated lazily."""

    name: ClassVar[str] = "arith"

    def __init__(
        self,
        *,
        min_steps: int = 1,
        max_steps: int = 1,
        max_value: int = 50,
        operations: Sequence[str] = ("+", "-"),
        max_factor: int = 5,
        train_size: int = 100_000,
        eval_size: int = 200,
        seed: int = 0,
        path: str | None = None,
        eval_path: str | None = None,
        question_field: str = "question",
        answer_field: str = "answer",
        id_field: str | None = None,
    ):
        """``min_steps``..``max_steps`` operations per problem, start values and added or
        subtracted amounts up to ``max_value``, multipliers and divisors 2..``max_factor``,
        ``operations`` a subset of ``+ - * /``. Amounts added or taken are at least 2 (so
        every object noun is plural). Local files (``path``/``eval_path``) replace
        the generator for their split."""
        if not 1 <= min_steps <= max_steps:
            raise ValueError(
                f"arith: need 1 <= min_steps <= max_steps, got min_steps={min_steps}, "
                f"max_steps={max_steps}"
            )
        if max_value < 2:
            raise ValueError(f"arith: max_value must be >= 2, got {max_value}")
        if max_factor < 2:
            raise ValueError(f"arith: max_factor must be >= 2, got {max_factor}")
        unknown = [op for op in operations if op not in OPERATIONS]
        if not operations or unknown:
            raise ValueError(
                f"arith: operations {list(operations)} must be a non-empty subset of "
                f"{list(OPERATIONS)}"
            )
        super().__init__(
            path=path, eval_path=eval_path, train_size=train_size, eval_size=eval_size, seed=seed
        )
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.max_value = max_value
        self.operations = tuple(operations)
        self.max_factor = max_factor
        self.question_field = question_field
        self.answer_field = answer_field
        self.id_field = id_field

    @classmethod
    def config_options(cls, task: TaskConfig, data: DataConfig) -> dict[str, Any]:
        """As :meth:`Task.config_options`, with the ``task.arith`` generator and file fields."""
        return {**super().config_options(task, data), **task.arith.model_dump(),
                **file_field_options(data)}

    def _load(self, split: str) -> Sequence[Record]:
        size = self._sizes[split]
        assert size is not None  # a generated split has a size (train_size, eval_size)
        return GeneratedRecords(size, partial(self.record, split))

    def _load_file(self, path: str, split: str) -> Sequence[Record]:
        return load_records_file(
            path,
            question_field=self.question_field,
            answer_field=self.answer_field,
            id_field=self.id_field,
        )

    def record(self, split: str, index: int) -> Record:
        """Problem ``index`` of ``split`` (``"train"`` or ``"test"``), the same on every call."""
        rng = random.Random(f"arith:{self.seed}:{split}:{index}")
        for _ in range(MAX_ATTEMPTS):
            problem = generate_problem(
                rng,
                min_steps=self.min_steps,
                max_steps=self.max_steps,
                max_value=self.max_value,
                operations=self.operations,
                max_factor=self.max_factor,
            )
            if problem is not None and held_out(problem[0]) == (split == "test"):
                question, answer, meta = problem
                return Record(
                    id=f"arith:{self.seed}:{split}:{index}",
                    question=question,
                    answer=str(answer),
                    meta=meta,
                )
        raise RuntimeError(
            f"arith: no valid problem in {MAX_ATTEMPTS} draws for {split} record {index}; "
            f"operations {list(self.operations)} cannot be chained with these settings"
        )
