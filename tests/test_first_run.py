"""A new user's first `memrl train`, end to end: a first run killed in the middle of its
start-up leaves nothing behind that stops the next one (no run-time build, no lock), and the
next run's terminal shows memrl's own lines only, the libraries' and actors' output being in
the run directory's ``logs/``, one file per actor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_job_submit import _processes_with_env

from memrl.run_dir import DRIVER_LOG_FILE, actor_log_name

REPO = Path(__file__).resolve().parents[1]
MEMRL_LINES = ("memrl:", "train:", "done:")  # memrl's lines, the progress bar, the result


@pytest.mark.slow
def test_a_first_run_killed_in_start_up_does_not_stop_the_next_which_prints_only_memrl_lines(tmp_path):
    # A fresh machine: empty home (caches, ONNX export) and torch-extensions cache.
    home, extensions, run = tmp_path / "home", tmp_path / "torch_extensions", tmp_path / "run"
    home.mkdir()
    extensions.mkdir()
    marker = ("MEMRL_TEST_FIRST_RUN", uuid.uuid4().hex)
    # Not this test process's Ray session, nor the vLLM log level that importing TRL sets in
    # os.environ (bench.e2e_vs_trl's tests import it): a new user's shell has neither.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "VLLM_LOGGING_LEVEL"}
    env.update({"HOME": str(home), "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(REPO),
                marker[0]: marker[1]})
    command = [sys.executable, "-m", "memrl.cli", "train", f"output_dir={run}", "ray.address=local",
               "trainer.max_steps=2", "task.eval_size=16"]
    learner_log = run / "logs" / actor_log_name("learner rank 0")
    try:
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while not learner_log.exists():  # the learner's process is starting: kill the driver now
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started its learner"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    finally:
        for pid in _processes_with_env(f"{marker[0]}={marker[1]}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shown = second.stderr + second.stdout
    assert second.returncode == 0, shown[-4000:]
    assert "done: 2 steps" in second.stdout
    assert not list(extensions.rglob("*")), "a learner compiled an extension at run time"
    lines = shown.rstrip("\n").split("\n")  # what a terminal shows as lines
    assert len(lines) <= 25, shown
    # A progress bar redraws its line with carriage returns: each redraw is memrl's too.
    foreign = [part for line in lines for part in line.split("\r") if part.strip()
               and not part.startswith(MEMRL_LINES)]
    assert not foreign, shown
    logs = run / "logs"
    expected = {DRIVER_LOG_FILE, *(actor_log_name(a) for a in
                                   ("learner rank 0", "rollout-0", "memory shard 0"))}  # one worker
    assert expected <= {p.name for p in logs.iterdir()}
    assert "LLM engine" in (logs / actor_log_name("rollout-0")).read_text()  # vLLM's lines are here
