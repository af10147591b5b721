"""The layers import downwards only: no module imports (at module level or inside a function)
from a layer above it, so the import graph has the shape docs and the README describe."""

import ast
from pathlib import Path

import pytest

from memrl.task_names import BUILTIN_TASKS
from memrl.tasks import TASKS

REPO = Path(__file__).resolve().parent.parent

# (files, modules they must not import): the driver (memrl.train) is the top of the house.
RULES = [
    ("actors/*.py", ("memrl.train",)),
    ("memrl/cluster/*.py", ("memrl.train", "memrl.actors")),
    ("memrl/rewards/*.py", ("memrl.train", "memrl.actors")),
    ("memrl/model/*.py", ("memrl.train", "memrl.actors")),
    ("memrl/tasks/*.py", ("memrl.train", "memrl.actors", "memrl.eval")),
    ("memrl/grading.py", ("memrl.tasks", "memrl.eval", "memrl.train")),
    ("memrl/task_names.py", ("memrl.tasks", "memrl.config")),
    ("memrl/config.py", ("memrl.tasks", "memrl.train")),
    ("memrl/plan.py", ("memrl.train",)),
    ("memrl/eval/*.py", ("memrl.train",)),
]


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names, wherever it stands."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("pattern", "forbidden"), RULES)
def test_no_import_from_a_layer_above(pattern, forbidden):
    files = sorted(REPO.glob(pattern))
    assert files, f"{pattern} matches no file"
    upward = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in files for name in imported_modules(path)
        if any(name == top or name.startswith(top + ".") for top in forbidden)
    }
    assert not upward, sorted(upward)


def test_the_config_knows_every_built_in_task():
    assert set(BUILTIN_TASKS) == set(TASKS)
