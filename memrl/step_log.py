"""Append-only JSON-lines files with a line per step (``metrics.jsonl``, ``ledger.jsonl``):
counting their lines and cutting them back to a checkpoint when a run resumes.

A checkpoint records how many lines each file had when it was taken; a resumed run keeps
those and drops what the interrupted run wrote after them, so each step appears once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def count_lines(path: Path) -> int:
    """The number of lines of ``path`` (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def truncate_after(path: Path, keep_lines: int, resume_step: int) -> int:
    """Keep the first ``keep_lines`` lines of ``path`` (or, with -1, the lines of steps up to
    ``resume_step``), replacing the file atomically; returns the number of lines kept."""
    if not path.is_file():
        return 0
    with path.open("rb") as fh:
        lines = fh.readlines()
    if keep_lines >= 0:
        kept = lines[:keep_lines]
    else:
        kept = [line for line in lines if (step := _step_of(line)) is None or step <= resume_step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, path)
    return len(kept)


def _step_of(line: bytes) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
