"""memrl: Memory-R+ reinforcement learning for small language models."""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# The Ray actors live in the checkout's top-level actors/ folder and install as memrl.actors
# (pyproject.toml's package-dir). A checkout that runs without being installed (Ray's
# working_dir under cluster/runtime_env_pip.yaml, or a copy uploaded over an older editable
# install) has no memrl/actors folder: resolve the name to the folder beside this package, so
# that one import name works in every layout and always means the code next to this memrl.
_HERE = Path(__file__).resolve().parent
_CHECKOUT_ACTORS = _HERE.parent / "actors"


class _CheckoutActorsFinder(importlib.abc.MetaPathFinder):
    """Finds ``memrl.actors`` in the checkout's top-level actors/ folder."""

    def find_spec(self, fullname, path=None, target=None):  # importlib's finder protocol
        if fullname != "memrl.actors":
            return None
        return importlib.util.spec_from_file_location(
            fullname, _CHECKOUT_ACTORS / "__init__.py", submodule_search_locations=[str(_CHECKOUT_ACTORS)]
        )


if not (_HERE / "actors").is_dir() and (_CHECKOUT_ACTORS / "__init__.py").is_file():
    sys.meta_path.insert(0, _CheckoutActorsFinder())
