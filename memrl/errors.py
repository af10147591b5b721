"""memrl's own errors, and the few-line message a user sees for any failure.

Every failure a user can cause or meet ends in :func:`explain`'s message — what failed, where
(file and line, reward, phase, step, actor, node) and what to do — and an exit code: 2 for bad
input (config, data, files, checkpoints, snapshots, a busy run directory), 1 for runtime faults
(timeouts, dead actors, a cluster that cannot hold the run, reward functions that raise, bugs).
The full traceback goes to a log file (see :func:`write_traceback`), not the terminal.

Each layer's own errors subclass :class:`InputError` or :class:`RuntimeFault` and carry their
exit code, headline and hint, so this module, the lowest layer, imports nothing of memrl's.

Code that knows the phase of a run wraps it in :func:`phase`: a Ray timeout inside becomes a
:class:`PhaseTimeout` naming the phase, step, actor and the ``trainer.timeout_s`` key, and any
other exception gets the phase and step attached as a note.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_RUNTIME = 1
EXIT_INPUT = 2
EXIT_INTERRUPTED = 130
ERROR_LOG = "memrl-error.log"
DEBUG_ENV = "MEMRL_DEBUG"


TRACEBACK_HINT = ("this looks like a bug or an environment problem; the log file has the full "
                  "traceback (rerun with --debug to see it here)")


class MemrlError(Exception):
    """A failure memrl explains itself: ``what`` failed, ``where``, and ``hint`` (what to do).

    A subclass may set a default ``hint`` and a ``label`` that :func:`explain` puts before the
    message ("checkpoint refused: ..."); a raise site may give its own ``where`` and ``hint``.
    ``str()`` holds only what the raise site gave: callers quote it inside their own messages."""

    exit_code = EXIT_RUNTIME
    label: str | None = None
    hint: str | None = None

    def __init__(self, what: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(what)
        self.what, self.where = what, where
        if hint is not None:  # else the class's default
            self.hint = hint

    def __str__(self) -> str:
        return _lines(self.what, self.where, vars(self).get("hint"))  # not the class's default

    def headline(self) -> str:
        """The first line of :func:`explain`'s message."""
        return f"{self.label}: {self.what}" if self.label else self.what


class InputError(MemrlError):
    """Bad input: a config, data file, checkpoint, snapshot or run directory that cannot be used."""

    exit_code = EXIT_INPUT


class DataError(InputError, ValueError):
    """A data file that cannot be read or has no usable record (a ValueError for old callers)."""


class RuntimeFault(MemrlError):
    """A fault while running: a timeout, a dead actor, a cluster that cannot hold the run."""


class UnexplainedFault(RuntimeFault):
    """A runtime fault memrl has no advice of its own for: :func:`explain` shows it like any
    exception it does not know (its type and first line) and points at the traceback."""

    hint = TRACEBACK_HINT

    def headline(self) -> str:
        return _type_and_first_line(type(self).__name__, self.what)


class PhaseTimeout(RuntimeFault):
    """A remote call of a run's phase did not answer within ``trainer.timeout_s``."""


@contextmanager
def phase(name: str, *, step: int | None = None, actor: str | None = None,
          timeout_s: float | None = None) -> Iterator[None]:
    """Attribute failures inside the block to phase ``name`` (of ``step``, on ``actor``).

    A Ray ``GetTimeoutError`` becomes a :class:`PhaseTimeout` naming them and the key that sets
    the limit; other exceptions pass through with the phase attached as a note (once: an inner
    phase wins), unless they are memrl errors that name their own ``where``."""
    try:
        yield
    except Exception as exc:
        inner = _cause(exc)
        if isinstance(inner, MemrlError) and inner.where:
            raise
        where = _phase_text(name, step, actor)
        if _is_ray_timeout(exc):
            limit = f"{timeout_s:g} s" if timeout_s is not None else "the limit"
            raise PhaseTimeout(
                f"timed out after {limit} waiting for {name}",
                where=where,
                hint="if this phase is just slow (big model, slow reward, busy cluster), raise "
                     "trainer.timeout_s; otherwise look for a stuck actor in the Ray logs",
            ) from exc
        if not any(str(n).startswith("while ") for n in getattr(exc, "__notes__", ())):
            exc.add_note(f"while {where}")
        raise


def _phase_text(name: str, step: int | None, actor: str | None) -> str:
    parts = [f"phase {name!r}"]
    if step is not None:
        parts.append(f"step {step}")
    if actor:
        parts.append(f"actor {actor}")
    return ", ".join(parts)


def _is_ray_timeout(exc: BaseException) -> bool:
    try:
        from ray.exceptions import GetTimeoutError
    except ImportError:  # ray is a dependency; this only keeps the CLI importable without it
        return False
    return isinstance(exc, GetTimeoutError)


def _notes(exc: BaseException) -> list[str]:
    return [str(n) for n in getattr(exc, "__notes__", ())]


def _cause(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor raised, for one that crossed a ``ray.get``."""
    try:
        from ray.exceptions import RayTaskError
    except ImportError:
        return exc
    while isinstance(exc, RayTaskError) and getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return exc


def explain(exc: BaseException) -> tuple[str, int]:
    """memrl's message for ``exc`` (a few lines, no traceback) and the exit code to end with."""
    notes = _notes(exc)
    inner = _cause(exc)
    notes += [n for n in _notes(inner) if n not in notes]
    where = "; ".join(n.removeprefix("while ") for n in notes)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(inner, MemrlError):
        return _lines(inner.headline(), inner.where or where, inner.hint), inner.exit_code
    if isinstance(inner, UnicodeDecodeError):
        return _lines(f"a file is not UTF-8 text ({inner})", where,
                      "re-save the file as UTF-8"), EXIT_INPUT
    if isinstance(inner, FileNotFoundError):
        return _lines(str(inner), where, "check the path (relative paths start from the "
                      "current directory)"), EXIT_INPUT
    if _is_ray_timeout(inner):
        return _lines(f"timed out: {inner}", where, "raise trainer.timeout_s if the work is "
                      "just slow"), EXIT_RUNTIME
    return _lines(_type_and_first_line(type(inner).__name__, str(inner)), where, TRACEBACK_HINT), \
        EXIT_RUNTIME


def _type_and_first_line(kind: str, message: str) -> str:
    """``"Kind: first line"``: a long message (a remote traceback) stays in the log file."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{kind}: {first}" if first else kind


def _lines(what: str, where: str | None, hint: str | None) -> str:
    lines = [what]
    if where:
        lines.append(f"  where: {where}")
    if hint:
        lines.append(f"  what to do: {hint}")
    return "\n".join(lines)


class ErrorLog:
    """Where a failing command writes its traceback: the run directory once a run owns one
    (:meth:`use_run_dir`), else the system temp directory."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def use_run_dir(self, run_dir: Path | None) -> None:
        """Write tracebacks into ``run_dir`` (None: back to the temp directory)."""
        self.run_dir = run_dir

    def path(self) -> Path:
        if self.run_dir is not None and self.run_dir.is_dir():
            return self.run_dir / ERROR_LOG
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.gettempdir()) / f"memrl-error-{stamp}-{os.getpid()}.log"


error_log = ErrorLog()


def write_traceback(exc: BaseException, argv: list[str]) -> Path | None:
    """Append ``exc``'s full traceback (with the command line, host and time) to the error log;
    returns its path, or None when it cannot be written (the message still goes out)."""
    path = error_log.path()
    header = (f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} "
              f"pid {os.getpid()}: memrl {' '.join(argv)}\n")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(header + "".join(traceback.format_exception(exc)) + "\n")
    except OSError:
        return None
    return path


def debug_enabled(flag: bool = False) -> bool:
    """The ``--debug`` switch or ``MEMRL_DEBUG=1``: tracebacks on the terminal too."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")
