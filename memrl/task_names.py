"""What ``task.name`` may be: a built-in task's name, or the import path of a Task subclass.

Below the tasks, so that the config checks the name when it loads without importing the task
registry (a layer above it): :data:`memrl.tasks.TASKS` maps each name in :data:`BUILTIN_TASKS`
to its class (a test checks that the two agree) and :func:`memrl.tasks.resolve_task` resolves
a name with :func:`import_task_class`.
"""

from __future__ import annotations

import sys
from typing import Any

from memrl.import_path import import_object

BUILTIN_TASKS: tuple[str, ...] = ("arith", "gsm8k", "aimo", "math500", "aime24", "countdown")


def import_task_class(name: str) -> type | None:
    """None for a built-in task's name; the class at an import path ``"package.module:Class"``.

    Raises ValueError naming ``name`` and the valid names for an unknown name, a path that does
    not import, or an object that is no subclass of :class:`memrl.tasks.base.Task`."""
    if name in BUILTIN_TASKS:
        return None
    valid = ", ".join(sorted(BUILTIN_TASKS))
    if ":" not in name:
        raise ValueError(f"unknown task {name!r}; valid tasks: {valid} "
                         "(or an import path 'package.module:TaskClass')")
    cls = import_object(name, label=f"task {name!r}", expected=f"a built-in task name ({valid})")
    if not _is_task_class(cls):
        what = cls.__name__ if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ValueError(f"task {name!r} is {what}, not a subclass of memrl.tasks.base.Task")
    return cls


def _is_task_class(obj: Any) -> bool:
    """Whether ``obj`` subclasses memrl.tasks.base.Task, without importing the tasks: a subclass's
    module has imported memrl.tasks.base, so while that is not loaded nothing subclasses Task."""
    base = sys.modules.get("memrl.tasks.base")
    return base is not None and isinstance(obj, type) and issubclass(obj, base.Task)
