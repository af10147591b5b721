"""Countdown: reach a target by combining the given numbers with ``+ - * /``, each used once.

Problems are generated on demand (default, offline) or read from the hub dataset
``Jiayi-Pan/Countdown-Tasks-3to4`` (fields ``nums``, ``target``; one ``train`` split, from
which a seeded ``eval_size`` records are held out as the test split) or from local files with
the same fields.

A generated problem draws 3–4 numbers and combines them pairwise in random order with random
operations (subtraction only to a positive result, division only when exact), so every
intermediate is a positive integer and the target is reachable; ``meta["solution"]`` holds
that expression. Train and test are disjoint by content hash (see ``held_out``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from memrl.grading import ScoredAnswer
from memrl.prompts import COUNTDOWN_SYSTEM_PROMPT, countdown_completion
from memrl.tasks.base import PATH_OPTIONS, GeneratedRecords, Task, held_out
from memrl.tasks.files import RowError, check_unique_ids, read_rows, require_field, rows_to_records
from memrl.tasks.hub import load_hub_split, numbered_rows
from memrl.types import Record

if TYPE_CHECKING:
    from memrl.config import DataConfig, TaskConfig
    from memrl.verify import CheckMode

HUB_ID = "Jiayi-Pan/Countdown-Tasks-3to4"
MAX_ATTEMPTS = 10_000  # draws per record before giving up (only hit by impossible settings)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def countdown_question(numbers: Sequence[int], target: int) -> str:
    """The user turn of a Countdown problem."""
    return (
        f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
        "You can use basic arithmetic operations (+, -, *, /) and each number only once."
    )


def countdown_record(record_id: str, numbers: Sequence[int], target: int, **meta: Any) -> Record:
    return Record(
        id=record_id,
        question=countdown_question(numbers, target),
        answer=str(target),
        meta={"numbers": list(numbers), "target": target, **meta},
    )


def _combine(
    rng: random.Random, left: tuple[int, str, int], right: tuple[int, str, int]
) -> tuple[int, str, int]:
    """Join two (value, text, precedence) terms with an operation that keeps the value a
    positive integer; parentheses only where precedence needs them."""
    (a, a_text, a_prec), (b, b_text, b_prec) = left, right
    results = {"+": a + b, "*": a * b}
    if a > b:
        results["-"] = a - b
    if a % b == 0:
        results["/"] = a // b
    op = rng.choice(sorted(results))
    value = results[op]
    prec = _PRECEDENCE[op]
    if a_prec < prec:
        a_text = f"({a_text})"
    if b_prec < prec or (b_prec == prec and op in "-/"):
        b_text = f"({b_text})"
    return value, f"{a_text} {op} {b_text}", prec


def generate_countdown(
    rng: random.Random, *, min_numbers: int, max_numbers: int, max_number: int, max_target: int
) -> tuple[list[int], int, str] | None:
    """(numbers, target, solution expression) drawn with ``rng``; None if the drawn expression's
    value exceeds ``max_target`` (the caller draws again)."""
    numbers = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
    terms = [(n, str(n), _ATOM) for n in numbers]
    while len(terms) > 1:
        i, j = rng.sample(range(len(terms)), 2)
        joined = _combine(rng, terms[i], terms[j])
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [joined]
    target, solution, _ = terms[0]
    if target > max_target:
        return None
    return numbers, target, solution


def _row_record_maker(
    numbers_field: str, target_field: str, id_prefix: str
) -> Callable[[Mapping[str, Any], int], Record]:
    def make_record(row: Mapping[str, Any], number: int) -> Record:
        numbers = require_field(row, numbers_field)
        target = require_field(row, target_field)
        if not isinstance(numbers, (list, tuple)) or not numbers or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in numbers
        ):
            raise RowError(
                f"field {numbers_field!r} must be a non-empty list of integers, got {numbers!r}"
            )
        if isinstance(target, bool) or not isinstance(target, int):
            raise RowError(f"field {target_field!r} must be an integer, got {target!r}")
        return countdown_record(f"{id_prefix}:{number}", [int(n) for n in numbers], int(target))

    return make_record


class CountdownTask(Task):
    """Countdown with the ``<think>``/``<answer>`` format and its two rewards."""

    name: ClassVar[str] = "countdown"
    system_prompt: ClassVar[str] = COUNTDOWN_SYSTEM_PROMPT
    exemplars: ClassVar[tuple[tuple[str, str], ...]] = ()
    rule_rewards: ClassVar[tuple[str, ...]] = ("countdown_format", "countdown_equation")
    correctness_reward: ClassVar[str] = "countdown_equation"

    def __init__(
        self,
        *,
        source: str = "generated",
        min_numbers: int = 3,
        max_numbers: int = 4,
        max_number: int = 100,
        max_target: int = 100,
        train_size: int = 100_000,
        eval_size: int = 500,
        seed: int = 0,
        path: str | None = None,
        eval_path: str | None = None,
        numbers_field: str = "nums",
        target_field: str = "target",
    ):
        """``source``: ``"generated"`` or ``"hub"``. Generated problems use ``min_numbers``..
        ``max_numbers`` numbers from 1..``max_number`` and targets up to ``max_target`` (with the
        defaults ≈14% of drawn expressions land in 1..100: ≈0.1 ms per record). Local
        files (``path``/``eval_path``, fields ``numbers_field``/``target_field``) replace the
        source for their split."""
        if source not in ("generated", "hub"):
            raise ValueError(f"countdown: source = {source!r}; use 'generated' or 'hub'")
        if not 2 <= min_numbers <= max_numbers:
            raise ValueError(
                f"countdown: need 2 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}"
            )
        if max_number < 1 or max_target < 1:
            raise ValueError(
                f"countdown: max_number ({max_number}) and max_target ({max_target}) must be >= 1"
            )
        super().__init__(
            path=path, eval_path=eval_path, train_size=train_size, eval_size=eval_size, seed=seed
        )
        self.source = source
        self.min_numbers = min_numbers
        self.max_numbers = max_numbers
        self.max_number = max_number
        self.max_target = max_target
        self.numbers_field = numbers_field
        self.target_field = target_field
        self._hub_records: list[Record] | None = None

    @classmethod
    def config_options(cls, task: TaskConfig, data: DataConfig) -> dict[str, Any]:
        """As :meth:`Task.config_options`, with the ``task.countdown`` generator."""
        return {**super().config_options(task, data), **task.countdown.model_dump()}

    def demonstration(self, record: Record, *, free_text: bool = False, direct: bool = False) -> str:
        """The solution is the equation itself, after a line naming the numbers and target
        (Countdown's answer is the working, so there is no ``direct`` demonstration)."""
        if direct:
            raise ValueError("countdown has no direct demonstrations: its answer is the equation "
                             "itself (set model.tiny.habit_steps: 0)")
        solution = self._solution(record)
        thinking = f"Use {record.meta.get('numbers')} to make {record.answer}."
        if free_text:
            return f"{thinking}\n{solution}"
        return countdown_completion(thinking, solution)

    def score_answers(
        self, records: Sequence[Record], completions: Sequence[str], *, timeout_s: float
    ) -> list[ScoredAnswer]:
        """The equation check: the equation in ``<answer>`` must use each given number once and
        hit the target (no math-verify, so ``timeout_s`` is unused)."""
        return [equation_check(text, record) for text, record in zip(completions, records)]

    def reward_answer(self, completion: str, verifier: CheckMode) -> tuple[str | None, str]:
        from memrl.rewards.countdown import extract_equation

        found = extract_equation(completion)
        return (found, "equation") if found else (None, "none")

    def hub_dataset(self) -> tuple[str, str | None] | None:
        return (HUB_ID, None) if self.source == "hub" else None

    def _load(self, split: str) -> Sequence[Record]:
        if self.source == "hub":
            return self._hub_split(split)
        size = self._sizes[split]
        assert size is not None  # a generated split has a size (train_size, eval_size)
        return GeneratedRecords(size, partial(self.record, split))

    def _load_file(self, path: str, split: str) -> Sequence[Record]:
        rows, unit = read_rows(path)
        records = rows_to_records(
            rows,
            source=str(path),
            unit=unit,
            make_record=_row_record_maker(self.numbers_field, self.target_field, Path(path).stem),
        )
        check_unique_ids(records, str(path))
        return records

    def _hub_split(self, split: str) -> list[Record]:
        """The hub has one split: a seeded permutation's first ``eval_size`` rows are test,
        the rest train."""
        if self._hub_records is None:
            table = load_hub_split(
                HUB_ID, "train", path_option=PATH_OPTIONS[split], fields=("nums", "target")
            )
            self._hub_records = rows_to_records(
                numbered_rows(table),
                source=f"{HUB_ID} (train)",
                unit="row",
                make_record=_row_record_maker("nums", "target", "countdown:hub"),
            )
        order = list(range(len(self._hub_records)))
        random.Random(f"countdown:{self.seed}:hub").shuffle(order)
        held = self._sizes["test"]
        chosen = order[:held] if split == "test" else order[held:]
        return [self._hub_records[i] for i in sorted(chosen)]

    def record(self, split: str, index: int) -> Record:
        """Generated problem ``index`` of ``split``, the same on every call."""
        rng = random.Random(f"countdown:{self.seed}:{split}:{index}")
        for _ in range(MAX_ATTEMPTS):
            problem = generate_countdown(
                rng,
                min_numbers=self.min_numbers,
                max_numbers=self.max_numbers,
                max_number=self.max_number,
                max_target=self.max_target,
            )
            if problem is None:
                continue
            numbers, target, solution = problem
            if held_out(f"{sorted(numbers)}->{target}") == (split == "test"):
                return countdown_record(
                    f"countdown:{self.seed}:{split}:{index}", numbers, target, solution=solution
                )
        raise RuntimeError(
            f"countdown: no problem with a target <= {self.max_target} in {MAX_ATTEMPTS} draws "
            f"for {split} record {index}; raise max_target"
        )


def equation_check(completion: str, record: Record) -> ScoredAnswer:
    """Countdown's equation check of one completion against its record's numbers and target."""
    from memrl.rewards.countdown import equation_score, extract_equation

    numbers, target = record.meta.get("numbers"), record.meta.get("target", record.answer)
    if numbers is None:
        raise ValueError(
            f"record {record.id!r} has no meta['numbers']: the Countdown check needs the numbers"
        )
    equation = extract_equation(completion)
    correct = equation_score(completion, numbers, Fraction(str(target))) == 1.0
    return ScoredAnswer(equation or None, "equation" if equation else "none", correct)
