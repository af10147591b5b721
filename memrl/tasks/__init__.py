"""Task registry: ``make_task(name, **kwargs)`` builds a task by its config name."""

from __future__ import annotations

from typing import Any

from memrl.tasks.aime24 import AIME24Task
from memrl.tasks.aimo import AIMOTask
from memrl.tasks.arith import ArithTask
from memrl.tasks.base import Task
from memrl.tasks.countdown import CountdownTask
from memrl.tasks.gsm8k import GSM8KTask
from memrl.tasks.math500 import Math500Task

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (ArithTask, GSM8KTask, AIMOTask, Math500Task, AIME24Task, CountdownTask)
}


def make_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` built with its constructor's keyword arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


__all__ = ["TASKS", "Task", "make_task"]
