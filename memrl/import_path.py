"""Objects named in a config by import path ``"package.module:attr"`` (rewards, tasks)."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str, *, label: str, expected: str) -> Any:
    """The object at ``"package.module:attr"`` (``attr`` may be dotted).

    ``label`` names what is being resolved in errors (e.g. ``"reward 'x'"``); ``expected`` says
    what a name that is no import path should have been (e.g. ``"a built-in reward name (...)"``).
    Every failure is a ValueError saying which part of the path is wrong.
    """
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"{label}: expected {expected} or an import path 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(
                f"{label}: module {module_name!r} not found (is it installed or on PYTHONPATH?)"
            ) from exc
        raise ValueError(f"{label}: importing {module_name!r} failed: {exc}") from exc
    obj: Any = module
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"{label}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, attr)
    return obj
