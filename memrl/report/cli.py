"""``memrl report RUN_DIR [RUN_DIR ...] [--out DIR] [--format md|html] [--smooth N]``."""

from __future__ import annotations

import sys
from pathlib import Path

from memrl.report.runs import RunDirError
from memrl.report.write import Format, write_report
from memrl.run_dir import RunDir

EXIT_BAD_RUN = 2


def main_report(run_dirs: list[str], out: str | None, fmt: Format, smoothing: int = 1) -> int:
    """Write the report of ``run_dirs`` into ``out`` (default ``RUN_DIR/report`` of the first
    run), print the report's path and return 0; a bad run directory prints
    ``memrl report: ...`` to stderr and returns 2."""
    try:
        if not run_dirs:
            raise RunDirError("no run directory given")
        out_dir = Path(out) if out is not None else RunDir(run_dirs[0]).report
        path = write_report(run_dirs, out_dir, fmt=fmt, smoothing=smoothing)
    except RunDirError as exc:
        print(f"memrl report: {exc}", file=sys.stderr)
        return EXIT_BAD_RUN
    print(path)
    return 0
