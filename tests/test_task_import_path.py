"""A task named by import path: built from the config, trained on, warm-started and evaluated
with what the task class itself says (records, rewards, demonstrations, evaluation check)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import pytest

from memrl.config import ConfigError, load_config
from memrl.eval.graders import grade, score_completions
from memrl.eval.settings import EvalSettings, build_eval_task
from memrl.grading import ScoredAnswer
from memrl.model.recipe import warmstart_completions
from memrl.tasks import TASKS, build_task, make_task, resolve_task
from memrl.tasks.base import GeneratedRecords, Task
from memrl.train.setup import build_reward_plan
from memrl.types import Record


class SquareTask(Task):
    """'What is n squared?' for n in 2..max_n; rewards: the XML count and correctness."""

    name: ClassVar[str] = "square"
    rule_rewards: ClassVar[tuple[str, ...]] = ("xmlcount", "correctness")
    exemplars: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, *, max_n: int = 5, train_size: int = 50, eval_size: int = 10,
                 seed: int = 0, path: str | None = None, eval_path: str | None = None):
        super().__init__(path=path, eval_path=eval_path, train_size=train_size,
                         eval_size=eval_size, seed=seed)
        self.max_n = max_n

    def _load(self, split: str) -> Sequence[Record]:
        return GeneratedRecords(self._sizes[split], partial(self._record, split))

    def _load_file(self, path: str, split: str) -> Sequence[Record]:
        raise NotImplementedError("square has no files")

    def _record(self, split: str, index: int) -> Record:
        n = random.Random(f"square:{self.seed}:{split}:{index}").randint(2, self.max_n)
        return Record(id=f"square:{split}:{index}", question=f"What is {n} squared?",
                      answer=str(n * n), meta={"solution": f"{n} * {n} = {n * n}."})


class ParityTask(SquareTask):
    """Like SquareTask, but an answer counts when it has the gold answer's parity."""

    def score_answers(self, records, completions, *, timeout_s):
        return [ScoredAnswer(text, "parity", int(text) % 2 == int(r.answer) % 2)
                for text, r in zip(completions, records)]


SQUARE = f"{__name__}:SquareTask"


def test_config_names_a_task_by_import_path_and_builds_it_with_its_options():
    cfg = load_config(None, [f"task.name={SQUARE}", "task.options={max_n: 3}", "task.eval_size=7"])
    task = build_task(cfg)
    assert isinstance(task, SquareTask) and task.max_n == 3
    test = task.dataset("test")
    assert len(test) == 7  # task.eval_size reaches the task as for built-in tasks
    assert {r.answer for r in task.dataset("train")[:50]} <= {"4", "9"}
    assert resolve_task(SQUARE) is SquareTask and make_task(SQUARE, max_n=2).max_n == 2
    assert set(TASKS) == {"arith", "gsm8k", "aimo", "math500", "aime24", "countdown"}  # unchanged


def test_the_tasks_rewards_and_demonstrations_come_from_the_class():
    cfg = load_config(None, [f"task.name={SQUARE}", "method=r1"])
    task = build_task(cfg)
    plan = build_reward_plan(cfg, task)
    assert [s.label for s in plan.specs] == ["xmlcount", "correctness"]
    assert plan.correctness == "correctness"
    records = list(task.dataset("train")[:4])
    tagged = warmstart_completions(task, records[:1], 0.0, 0)[0]
    free = task.demonstration(records[0], free_text=True)
    n = records[0].question.split()[2]
    assert tagged == f"<reasoning>\n{n} * {n} = {records[0].answer}.\n</reasoning>\n" \
        f"<answer>\n{records[0].answer}\n</answer>\n"
    assert free == f"{n} * {n} = {records[0].answer}.\n#### {records[0].answer}"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ([f"task.name={__name__}:NoSuchTask"], "task.name: task '"),
        ([f"task.name={__name__}:SQUARE"], "is a str, not a subclass of memrl.tasks.base.Task"),
        (["task.name=mypkg_that_is_absent.tasks:MyTask"], "module 'mypkg_that_is_absent.tasks' not found"),
        (["task.name=squares"], "unknown task 'squares'; valid tasks: aime24, aimo, arith"),
        ([f"task.name={SQUARE}", "task.options={max_m: 3}"], "task.options ['max_m'] do not fit"),
        (["task.options={max_n: 3}"], "task.options is for tasks named by import path"),
    ],
)
def test_bad_task_names_and_options_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert "task." in str(info.value) and fragment in str(info.value)


def test_eval_uses_the_tasks_own_check():
    records = [Record(id="a", question="q", answer="4"), Record(id="b", question="q", answer="9")]
    completions = ["<answer>4</answer>", "<answer>7</answer>"]
    default = score_completions(SquareTask(), records, completions)
    assert [(s.extracted, s.source, s.correct) for s in default] == [("4", "xml", True),
                                                                      ("7", "xml", False)]
    parity = grade("extractive_match", ParityTask(), records, ["6", "7"], [1, 1],
                   verifier="math", max_tokens=8, timeout_s=1.0)
    assert [s.correct for s in parity] == [True, True]
    task = build_eval_task(EvalSettings(task=SQUARE, task_options={"max_n": 2}))
    assert isinstance(task, SquareTask) and {r.answer for r in task.dataset("test")} == {"4"}
