"""Task registry: a task is named by its built-in name (``arith``) or, like a reward, by import
path (``"mypkg.tasks:MyTask"``, a :class:`Task` subclass); ``make_task`` builds one, ``build_task``
the one a config names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memrl.task_names import import_task_class
from memrl.tasks.aime24 import AIME24Task
from memrl.tasks.aimo import AIMOTask
from memrl.tasks.arith import ArithTask
from memrl.tasks.base import Task
from memrl.tasks.countdown import CountdownTask
from memrl.tasks.gsm8k import GSM8KTask
from memrl.tasks.math500 import Math500Task

if TYPE_CHECKING:
    from memrl.config import Config

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (ArithTask, GSM8KTask, AIMOTask, Math500Task, AIME24Task, CountdownTask)
}


def resolve_task(name: str) -> type[Task]:
    """The task class of a built-in name or of a ``"package.module:Class"`` path; ValueError
    naming ``name`` and the valid names otherwise (:func:`memrl.task_names.import_task_class`)."""
    task_class = import_task_class(name)
    return TASKS[name] if task_class is None else task_class


def make_task(name: str, **kwargs: Any) -> Task:
    """The task called ``name`` built with its constructor's keyword arguments."""
    return resolve_task(name)(**kwargs)


def build_task(cfg: Config) -> Task:
    """The configured task (built-in or by import path), as its ``from_config`` reads the
    ``task`` and ``data`` sections (local files when ``data.path``/``data.eval_path`` are set)."""
    return resolve_task(cfg.task.name).from_config(cfg.task, cfg.data)


def format_rewards(tasks: tuple[type[Task], ...] = tuple(TASKS.values())) -> tuple[str, ...]:
    """The rule rewards of ``tasks`` that judge the form, not the answer (their rule rewards
    without the correctness reward), each once, in task order."""
    names = (r for task in tasks for r in task.rule_rewards if r != task.correctness_reward)
    return tuple(dict.fromkeys(names))


def correctness_rewards(tasks: tuple[type[Task], ...] = tuple(TASKS.values())) -> tuple[str, ...]:
    """The correctness reward of each of ``tasks``, each once, in task order."""
    return tuple(dict.fromkeys(task.correctness_reward for task in tasks))


__all__ = ["TASKS", "Task", "build_task", "correctness_rewards", "format_rewards", "make_task", "resolve_task"]
