"""Task registry: a task is named by its built-in name (``arith``) or, like a reward, by import
path (``"mypkg.tasks:MyTask"``, a :class:`Task` subclass); ``make_task`` builds one."""

from __future__ import annotations

from typing import Any

from memrl.import_path import import_object
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


def resolve_task(name: str) -> type[Task]:
    """The task class of a built-in name or of a ``"package.module:Class"`` path; ValueError
    naming ``name`` and the valid names otherwise."""
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))} "
                         "(or an import path 'package.module:TaskClass')")
    cls = import_object(name, label=f"task {name!r}",
                        expected=f"a built-in task name ({', '.join(sorted(TASKS))})")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        what = cls.__name__ if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ValueError(f"task {name!r} is {what}, not a subclass of memrl.tasks.base.Task")
    return cls


def make_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` built with its constructor's keyword arguments."""
    return resolve_task(name)(**kwargs)


def format_rewards(tasks: tuple[type[Task], ...] = tuple(TASKS.values())) -> tuple[str, ...]:
    """The rule rewards of ``tasks`` that judge the form, not the answer (their rule rewards
    without the correctness reward), each once, in task order."""
    names = (r for task in tasks for r in task.rule_rewards if r != task.correctness_reward)
    return tuple(dict.fromkeys(names))


def correctness_rewards(tasks: tuple[type[Task], ...] = tuple(TASKS.values())) -> tuple[str, ...]:
    """The correctness reward of each of ``tasks``, each once, in task order."""
    return tuple(dict.fromkeys(task.correctness_reward for task in tasks))


__all__ = ["TASKS", "Task", "correctness_rewards", "format_rewards", "make_task", "resolve_task"]
