"""What a task is: everything memrl knows about one task, in one class.

A task owns its prompts, its rule rewards (``rule_rewards``; ``correctness_reward`` decides
success), its records split by split, how it is built from the config (``from_config``), its
warm-start demonstrations (``demonstration``), its evaluation check (``score_answers`` for
``memrl eval``'s extractive grader, ``reward_answer`` for what the correctness reward reads) and
the hub dataset it reads (``hub_dataset``). The metric keys collapse detection and the report
read follow from its rewards (``memrl.tasks.format_rewards`` / ``correctness_rewards``).
Adding a task means writing one subclass; name it in the config as ``task.name:
"package.module:Class"`` (options in ``task.options``), or make it built-in: add it to
``memrl.tasks.TASKS`` and its name to ``memrl.task_names.BUILTIN_TASKS``.

A task's records come from its own source (a procedural generator or a Hugging Face dataset)
or, for any task, from local files: ``path`` for the train split and ``eval_path`` for the
test split (the config keys ``data.path`` / ``data.eval_path``).
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, overload

from memrl.grading import ScoredAnswer, check_extracted_answers
from memrl.prompts import DIRECT_ANSWER_OPENING, GSM8K_EXEMPLARS, SYSTEM_PROMPT, xml_completion
from memrl.tasks.files import check_unique_ids, load_records_file, qa_record_maker, rows_to_records
from memrl.tasks.hub import load_hub_split, numbered_rows
from memrl.types import Record

if TYPE_CHECKING:
    from memrl.config import DataConfig, TaskConfig
    from memrl.verify import CheckMode

# Config key that takes a local file for each split, for error messages.
PATH_OPTIONS: Mapping[str, str] = {"train": "data.path", "test": "data.eval_path"}

# The paper's R1 rule rewards for the XML answer format (names in the reward registry).
XML_RULE_REWARDS = ("xmlcount", "soft_format", "strict_format", "integer", "correctness")

HELD_OUT_BUCKETS = 10  # procedural tasks: one problem in ten (by content hash) is test-only


class Task(ABC):
    """A task: prompts, reward names and ``dataset(split)``.

    ``rule_rewards`` are the registry names of the task's R1 rewards; ``correctness_reward`` is
    the one whose value decides success (> 0.5) or failure for the episodic memory.
    """

    name: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    system_prompt: ClassVar[str] = SYSTEM_PROMPT
    exemplars: ClassVar[tuple[tuple[str, str], ...]] = GSM8K_EXEMPLARS
    rule_rewards: ClassVar[tuple[str, ...]] = XML_RULE_REWARDS
    correctness_reward: ClassVar[str] = "correctness"

    def __init__(
        self,
        *,
        path: str | None = None,
        eval_path: str | None = None,
        train_size: int | None = None,
        eval_size: int | None = None,
        seed: int = 0,
    ):
        files = {"train": path, "test": eval_path}
        sizes = {"train": train_size, "test": eval_size}
        for split, file in files.items():
            if file is not None and split not in self.splits:
                raise ValueError(
                    f"task {self.name!r} has no {split!r} split (splits: {list(self.splits)}); "
                    f"pass its file as {PATH_OPTIONS[self.splits[0]]} instead of "
                    f"{PATH_OPTIONS[split]}"
                )
        for split, size in sizes.items():
            if size is not None and size < 1:
                raise ValueError(f"task {self.name!r}: {split} size must be >= 1, got {size}")
        self.seed = seed
        self._files = files
        self._sizes = sizes
        self._loaded: dict[str, Sequence[Record]] = {}

    @classmethod
    def from_config(cls, task: TaskConfig, data: DataConfig) -> Task:
        """The task as the config's ``task`` and ``data`` sections set it."""
        return cls(**cls.config_options(task, data))

    @classmethod
    def config_options(cls, task: TaskConfig, data: DataConfig) -> dict[str, Any]:
        """Constructor arguments from the config: the data seed, local files, split sizes (when
        set) and ``task.options``. Subclasses add their own section's keys."""
        options: dict[str, Any] = {"seed": task.seed, "path": data.path, "eval_path": data.eval_path}
        for key in ("train_size", "eval_size"):
            if getattr(task, key) is not None:
                options[key] = getattr(task, key)
        return {**options, **task.options}

    def dataset(self, split: str) -> Sequence[Record]:
        """The records of ``split`` (loaded once, then cached)."""
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; splits: {list(self.splits)}"
            )
        if split not in self._loaded:
            file = self._files[split]
            records = self._load_file(file, split) if file else self._load(split)
            self._loaded[split] = self._subsample(records, split)
        return self._loaded[split]

    def demonstration(self, record: Record, *, free_text: bool = False, direct: bool = False) -> str:
        """The assistant text that solves ``record`` in the task's answer format (the tiny
        model's warm-start data), or with ``free_text`` the worked solution ending in GSM8K's
        ``#### answer`` line, untagged. With ``direct`` the answer is stated without working
        (``The answer is N.``), still in the answer format: a base that learns from such
        demonstrations answers in one go, which a tiny model mostly gets wrong on multi-step
        problems. Needs ``record.meta["solution"]`` (except ``direct``)."""
        if free_text and direct:
            raise ValueError("a demonstration is either free text or direct, not both")
        if direct:
            return xml_completion(f"{DIRECT_ANSWER_OPENING} {record.answer}.", record.answer)
        solution = self._solution(record)
        if free_text:
            return f"{solution}\n#### {record.answer}"
        return xml_completion(solution, record.answer)

    def _solution(self, record: Record) -> str:
        solution = record.meta.get("solution")
        if not solution:
            raise ValueError(
                f"model.name_or_path=tiny warm-starts on worked solutions, but task {self.name!r} "
                f"record {record.id} has no meta['solution']"
            )
        return solution

    def score_answers(
        self, records: Sequence[Record], completions: Sequence[str], *, timeout_s: float
    ) -> list[ScoredAnswer]:
        """The extractive-match grade of ``completions[i]`` against ``records[i]``: the answer
        read from the ``<answer>`` tag, a ``\\boxed{}`` or the free text, checked with
        math-verify (``timeout_s`` per item). Tasks with another notion of a correct answer
        override it."""
        return check_extracted_answers(records, completions, timeout_s=timeout_s)

    def reward_answer(self, completion: str, verifier: CheckMode) -> tuple[str | None, str]:
        """(what the correctness reward reads as the answer, where: ``"xml"`` or ``"none"``)."""
        from memrl.rewards.rule import predicted_answer

        found = predicted_answer(completion, verifier)
        return (found, "xml") if found else (None, "none")

    def hub_dataset(self) -> tuple[str, str | None] | None:
        """(dataset id, config) of the Hugging Face dataset read for a split without a local
        file; None when the task makes its records itself."""
        return None

    @abstractmethod
    def _load(self, split: str) -> Sequence[Record]:
        """The split's records from the task's own source (no local file given)."""

    @abstractmethod
    def _load_file(self, path: str, split: str) -> Sequence[Record]:
        """The split's records from a local JSONL/Parquet file."""

    def _subsample(self, records: Sequence[Record], split: str) -> Sequence[Record]:
        """A seeded random subset of ``size`` records, in source order (all if size is None or
        at least the number of records). Generated splits already have their size."""
        size = self._sizes[split]
        if size is None or size >= len(records):
            return records
        rng = random.Random(f"{self.name}:{self.seed}:{split}")
        return [records[i] for i in sorted(rng.sample(range(len(records)), size))]


class TableTask(Task):
    """A task whose records are rows of a Hugging Face dataset (or of a local file).

    Subclasses set the hub dataset, the split map, the field names and the answer parser.
    """

    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    hub_splits: ClassVar[Mapping[str, str]] = {"train": "train", "test": "test"}
    hub_id_field: ClassVar[str | None] = None
    question_field_default: ClassVar[str] = "question"
    answer_field_default: ClassVar[str] = "answer"
    keep_solution: ClassVar[bool] = False  # the answer field holds a worked solution

    def __init__(
        self,
        *,
        path: str | None = None,
        eval_path: str | None = None,
        question_field: str | None = None,
        answer_field: str | None = None,
        id_field: str | None = None,
        plain_answers: bool = False,
        train_size: int | None = None,
        eval_size: int | None = None,
        seed: int = 0,
    ):
        """Field names apply to local files (None: the hub dataset's names). ``plain_answers``:
        a local file's answer field is the final answer itself, not a solution to parse.
        ``train_size`` / ``eval_size`` take a seeded random subset (None: every row)."""
        super().__init__(
            path=path, eval_path=eval_path, train_size=train_size, eval_size=eval_size, seed=seed
        )
        self.question_field = question_field or self.question_field_default
        self.answer_field = answer_field or self.answer_field_default
        self.id_field = id_field
        self.plain_answers = plain_answers

    @classmethod
    def config_options(cls, task: TaskConfig, data: DataConfig) -> dict[str, Any]:
        """As :meth:`Task.config_options`, with ``data.plain_answers`` and the file fields."""
        return {**super().config_options(task, data), "plain_answers": data.plain_answers,
                **file_field_options(data)}

    def hub_dataset(self) -> tuple[str, str | None] | None:
        return self.hub_id, self.hub_config

    def parse_answer(self, raw: str) -> str | None:
        """The gold answer from the text of the answer field, in the hub dataset's format
        (None: the row has none). Subclasses whose answer field is a solution override it."""
        return raw.strip()

    def _load_file(self, path: str, split: str) -> Sequence[Record]:
        return load_records_file(
            path,
            question_field=self.question_field,
            answer_field=self.answer_field,
            id_field=self.id_field,
            answer_parser=None if self.plain_answers else self.parse_answer,
            keep_solution=self.keep_solution and not self.plain_answers,
        )

    def _load(self, split: str) -> Sequence[Record]:
        hub_split = self.hub_splits[split]
        table = load_hub_split(
            self.hub_id,
            hub_split,
            config=self.hub_config,
            path_option=PATH_OPTIONS[split],
            fields=(self.question_field_default, self.answer_field_default),
        )
        source = f"{self.hub_id} ({hub_split})"
        records = rows_to_records(
            numbered_rows(table),
            source=source,
            unit="row",
            make_record=qa_record_maker(
                id_prefix=f"{self.name}:{split}",
                question_field=self.question_field_default,
                answer_field=self.answer_field_default,
                id_field=self.hub_id_field,
                answer_parser=self.parse_answer,
                keep_solution=self.keep_solution,
            ),
        )
        check_unique_ids(records, source)
        return records


class GeneratedRecords(Sequence[Record]):
    """A read-only sequence of ``size`` records made on demand by ``make(index)``.

    Nothing is stored, so ``size`` can be huge; ``make`` must be deterministic (and picklable,
    e.g. a ``functools.partial`` of a task method, for the sequence to travel to Ray actors).
    """

    def __init__(self, size: int, make: Callable[[int], Record]):
        self._size = size
        self._make = make

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(self._size))]
        if index < 0:
            index += self._size
        if not 0 <= index < self._size:
            raise IndexError(f"record index {index} out of range for {self._size} records")
        return self._make(index)


def file_field_options(data: DataConfig) -> dict[str, str]:
    """The question/answer/id field names of local files that ``data`` sets."""
    keys = ("question_field", "answer_field", "id_field")
    return {key: getattr(data, key) for key in keys if getattr(data, key) is not None}


def held_out(key: str) -> bool:
    """Whether a procedurally generated problem, identified by ``key`` (its content), belongs to
    the test split. Train and test draw only problems on their side, so they never overlap."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELD_OUT_BUCKETS == 0


def is_direct_answer(completion: str) -> bool:
    """Whether ``completion`` states its answer without working, the style of
    :meth:`Task.demonstration` with ``direct``: its reasoning (the ``<reasoning>`` part, or the
    whole text without the tag) starts with "The answer is". Every other completion counts as
    worked. The embedded default's base answers directly by habit; RL's switch to worked answers
    is what its training teaches (docs/findings.md)."""
    from memrl.verify import extract_xml_reasoning  # math-verify loads slowly; scoring has it already

    return extract_xml_reasoning(completion).startswith(DIRECT_ANSWER_OPENING)
