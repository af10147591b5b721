"""One run per output directory: a second run is refused naming the holder and writes nothing;
a killed holder's lock is taken over; checkpoint pruning leaves other writers' files alone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memrl.checkpoint import CheckpointManager
from memrl.cli import main
from memrl.run_dir import LOCK_FILE
from memrl.run_lock import RunDirBusy, RunLock

HOLD = """
import sys, time
from memrl.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(run: Path) -> subprocess.Popen:
    """Another process (another "run") holding ``run``'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_in_one_directory_is_refused_and_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # the first run's work so far
    holder = _holder(run)
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        code = main(["train", f"output_dir={run}", f"model.tiny.cache_dir={tmp_path / 'cache'}"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"output directory {run} is in use by another memrl run" in err
        assert f"host {socket.gethostname()}, pid {holder.pid}, started 20" in err
        assert "pick another output_dir" in err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written
        assert not (tmp_path / "cache").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_killed_holder_leaves_a_stale_lock_the_next_run_takes_over(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
        RunLock(run).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind

    lock = RunLock(run).acquire()
    try:
        assert lock.took_over["pid"] == holder.pid
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (run / LOCK_FILE).exists()


def test_live_pid_in_the_file_is_refused_even_without_flock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:  # a filesystem where flock does not reach: only the file says who holds it
        (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid,
                                                 "started": time.time()}))
        with pytest.raises(RunDirBusy, match=f"pid {sleeper.pid}"):
            RunLock(run).acquire()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def test_release_on_every_exit_path_and_no_trace_of_a_failed_start(tmp_path):
    run = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        with RunLock(run):
            assert (run / LOCK_FILE).is_file()
            raise RuntimeError("start-up failed")
    assert not run.exists()  # made by the lock, still empty: removed again
    kept = tmp_path / "kept"
    with RunLock(kept):
        (kept / "config.yaml").write_text("x")
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml"]


def test_pruning_touches_only_this_managers_partials(tmp_path):
    mine, other = CheckpointManager(str(tmp_path)), CheckpointManager(str(tmp_path))
    theirs = Path(other.begin(5))  # another writer, mid-save
    (theirs / "half.bin").write_bytes(b"x")
    partial = mine.begin(1)
    mine.complete(partial, 1, {"step": 1})
    assert theirs.is_dir()  # not pruned by my save
    assert mine.remove_stale_partials() == 1  # at start-up, under the run lock
    assert not theirs.exists() and mine.list_steps() == [1]
