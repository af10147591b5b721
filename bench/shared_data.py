"""Where the shared data sets live outside the repository (the GSM8K JSONL files).

``$MEMRL_SHARED_DIR`` when set, else a ``shared/`` folder beside the checkout
(``../shared`` relative to the repository root). Nothing here names a machine's path; tests
and benchmarks that need the files skip, or fall back, with :func:`missing_reason`. A
checkout-layout helper, so it lives with the benchmarks (which tests import too), not in the
installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED_DIR_ENV = "MEMRL_SHARED_DIR"


def shared_dir() -> Path:
    """``$MEMRL_SHARED_DIR``, else ``shared/`` beside the checkout."""
    configured = os.environ.get(SHARED_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parent.parent.parent / "shared"


def gsm8k_file(split: str) -> Path:
    """The shared GSM8K split as JSONL (``data/gsm8k/<split>.jsonl``; it may not exist)."""
    return shared_dir() / "data" / "gsm8k" / f"{split}.jsonl"


def missing_reason(path: Path) -> str:
    """Why a shared file is unavailable, naming it and how to point memrl at it."""
    return (f"shared data file {path} not found: set {SHARED_DIR_ENV} to the folder holding "
            f"data/gsm8k/, or place it at ../shared beside the checkout")
