"""References in ``docs/`` generated from the code, and the command line that writes one.

Each generator module (:mod:`memrl.config_docs`, :mod:`memrl.run_dir_docs`) renders its page
from the module that owns the facts; a test compares the committed page with a fresh
rendering, so a page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def write_generated(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` (parent folders created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def generator_main(argv: list[str] | None, *, prog: str, description: str | None,
                   render: Callable[[], str], default: Path) -> int:
    """``PROG [--out PATH | --stdout]``: write ``render()`` to ``default`` or ``--out``, or
    print it."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path, default=default, help="default: %(default)s")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    ns = parser.parse_args(argv)
    if ns.stdout:
        sys.stdout.write(render())
    else:
        print(f"wrote {write_generated(render(), ns.out)}")
    return 0
