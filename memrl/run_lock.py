"""One run per output directory: an exclusive lock file naming its holder.

``OUTPUT_DIR/.memrl.lock`` is held with ``flock`` for the run's lifetime and holds the holder's
host, pid, start time and command. A second run is refused with those details before it writes
anything. The kernel drops a ``flock`` when its process dies, however it dies, so a lock file
left by a killed run is stale by construction: the next run takes it over (and says so). When
the file names a live process on this host that is not holding the lock (a filesystem where
``flock`` does not reach across processes), the run is refused all the same.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from memrl.errors import InputError
from memrl.run_dir import RunDir

log = logging.getLogger(__name__)


class RunDirBusy(InputError):
    """Another run holds the output directory."""


class RunDirUnwritable(InputError):
    """The output directory cannot be created or written (read-only, no permission)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {when}"
            + (f", command: {holder['command']}" if holder.get("command") else ""))


class RunLock:
    """The exclusive lock of a run directory; ``acquire`` before writing, ``release`` at exit.

    Also a context manager. Releasing removes the lock file; a process that dies without
    releasing leaves a stale file the next ``acquire`` takes over."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).lock
        self._fd: int | None = None
        self._created = False  # acquire made the directory: release removes it if still empty
        self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any

    def _read_holder(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 1 << 16)
        try:
            holder = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            holder = {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunDirBusy` naming the holder (nothing else is written)."""
        if self._fd is not None:
            return self
        self._created = not self.run_dir.exists()
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read_holder(fd)
                os.close(fd)
                raise self._busy(holder) from None
            # The holder we waited behind may have removed the file on release: lock the file
            # that is at the path now, not an unlinked one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = self._read_holder(fd)
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
                and isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"]):
            os.close(fd)
            raise self._busy(holder)
        if holder:
            self.took_over = holder
            log.warning("%s: taking over the stale lock of a run that ended without releasing "
                        "it (%s)", self.path, _describe(holder))
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(mine).encode("utf-8"))
        os.fsync(fd)
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file, created with its directory; RunDirUnwritable when they cannot be."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirUnwritable(
                f"cannot write to the output directory {self.run_dir} ({exc.strerror or exc})",
                where=f"output_dir = {self.run_dir}",
                hint="pick a folder this user can write: output_dir=PATH") from exc

    def _busy(self, holder: dict[str, Any]) -> RunDirBusy:
        return RunDirBusy(
            f"output directory {self.run_dir} is in use by another memrl run",
            where=f"{self.path}: {_describe(holder)}",
            hint="wait for that run to finish (or stop it), or pick another output_dir=...; "
                 "two runs in one directory would overwrite each other's metrics, checkpoints "
                 "and model",
        )

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._created:
            try:
                self.run_dir.rmdir()  # a run that failed before writing leaves no trace
            except OSError:
                pass

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
