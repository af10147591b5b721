"""What reaches the person at the terminal during ``memrl train``, and where the rest goes.

:data:`terminal` is where the driver writes what a person reads: start-up progress, the
evaluations, the progress bar, the result. By default ``memrl train`` sends everything else
its driver process writes (libraries' prints and log records, Python warnings, Ray's C++
messages) to ``OUTPUT_DIR/logs/driver.log`` (:func:`libraries_to_file`), and each actor's output
to its own file beside it (:func:`redirect_actor_output`, called by each actor as it starts;
the driver names the folder in the actors' environment, ``MEMRL_LOG_DIR``). ``--verbose``
(``logging.verbose``) leaves all of it on the terminal, as Ray streams it. memrl's own warnings
(logger ``memrl``, in the driver) reach the terminal either way: they ask the user to act.

Output is moved at the file-descriptor level, so that what libraries write from C++ (Ray's
``gcs_client``, vLLM's and DeepSpeed's native code) moves with what Python writes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from memrl.run_dir import actor_log_name

LOG_DIR_ENV = "MEMRL_LOG_DIR"  # set in the actors' environment: the run's logs folder
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminal:
    """The person's terminal: its stdout and stderr as they were before the libraries' output
    was moved to a file (the process's own otherwise)."""

    def __init__(self) -> None:
        self._out: TextIO | None = None
        self._err: TextIO | None = None

    @property
    def err(self) -> TextIO:
        """Where progress goes (stderr): start-up lines, evaluations, the progress bar."""
        return self._err or sys.stderr

    @property
    def out(self) -> TextIO:
        """Where results go (stdout)."""
        return self._out or sys.stdout

    def say(self, line: str, *, result: bool = False) -> None:
        """Print one of memrl's lines (``result``: on stdout, else stderr)."""
        print(line, file=self.out if result else self.err, flush=True)


terminal = Terminal()


class _ToTerminal(logging.Handler):
    """memrl's warnings, as ``memrl: message`` lines on :data:`terminal` (wherever it is now)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("memrl: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            terminal.say(self.format(record))
        except Exception:  # noqa: BLE001 - logging must not raise (what logging.Handler does too)
            self.handleError(record)


def show_memrl_warnings() -> logging.Handler | None:
    """Show the ``memrl`` logger's warnings on :data:`terminal` as ``memrl: ...`` lines; returns
    the handler added, or None when one already shows them."""
    memrl_logger = logging.getLogger("memrl")
    if any(isinstance(h, _ToTerminal) for h in memrl_logger.handlers):
        return None
    handler = _ToTerminal()
    memrl_logger.addHandler(handler)
    return handler


def _append_fd(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _terminal_copy(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream to where ``stream`` writes that survives descriptor ``fd`` being moved:
    ``stream`` itself unless it writes to ``fd``, else a new stream on a copy of ``fd``
    (True: opened here)."""
    try:
        on_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # replaced by a capture (pytest, a notebook)
        on_fd = False
    if not on_fd:
        return stream, False
    return os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1), True


@contextmanager
def libraries_to_file(path: Path) -> Iterator[None]:
    """While inside: this process's stdout and stderr (file descriptors 1 and 2, and Python's
    ``sys.stdout``/``sys.stderr``) and its log records go to ``path`` (appended);
    :data:`terminal` and the ``memrl`` logger's warnings still reach the terminal. Everything
    is restored on the way out."""
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        stream.flush()
    (term_out, own_out), (term_err, own_err) = _terminal_copy(streams[0], 1), _terminal_copy(streams[1], 2)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    target = _append_fd(path)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # noqa: SIM115
    to_file = logging.StreamHandler(sys.stderr)
    to_file.setFormatter(logging.Formatter(_FILE_FORMAT))
    root = logging.getLogger()
    root_level = root.level
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    to_terminal = show_memrl_warnings()
    logging.captureWarnings(True)  # Python warnings (deprecations ...) become log records
    terminal._out, terminal._err = term_out, term_err
    try:
        yield
    finally:
        terminal._out = terminal._err = None
        logging.captureWarnings(False)
        if to_terminal is not None:
            logging.getLogger("memrl").removeHandler(to_terminal)
        root.removeHandler(to_file)
        root.setLevel(root_level)
        for stream in (sys.stdout, sys.stderr, term_out, term_err):
            stream.flush()
        sys.stdout, sys.stderr = streams
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        for stream, own in ((term_out, own_out), (term_err, own_err)):
            if own:
                stream.close()


def redirect_actor_output(actor: str) -> Path | None:
    """In an actor's process: send its stdout and stderr (descriptors 1 and 2: Python's and the
    libraries' native output alike) to ``$MEMRL_LOG_DIR/<actor>.log``, appended, so that a
    restarted actor continues its file. Returns the file; None when the run keeps the actors'
    output on the terminal (no ``MEMRL_LOG_DIR``) or the folder cannot be written on this node
    (the output then stays in Ray's own log of the process)."""
    folder = os.environ.get(LOG_DIR_ENV)
    if not folder:
        return None
    path = Path(folder) / actor_log_name(actor)
    try:
        target = _append_fd(path)
    except OSError:
        return None
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    return path
