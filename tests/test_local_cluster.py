"""`memrl train` without ``ray.address`` beside a cluster that ``ray start`` runs on this machine:
it joins that cluster and says so, and when the cluster can never hold the run's actors it
fails at once with the list (instead of waiting silently for ``trainer.timeout_s``); when that
cluster is another program's, started with another token, it says so and the ways out at once."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_job_submit import _free_ports, _processes_with_env, _ray_cli
from trainer_configs import FAST, TINY

from memrl.cluster.placement import Demand, unplaceable

REPO = Path(__file__).resolve().parents[1]


def test_packing_finds_the_actors_no_node_can_take():
    cpu = lambda n: {"CPU": float(n)}  # noqa: E731
    demands = [Demand(f"rollout worker {i}", cpu(1), "") for i in range(3)] + \
        [Demand("learner rank 0", {"CPU": 1.0, "GPU": 1.0}, "")]
    assert unplaceable(demands, [cpu(4)]) == [demands[-1]]  # no GPU anywhere
    assert [d.actor for d in unplaceable(demands, [cpu(3), {"CPU": 1.0, "GPU": 1.0}])] == []
    assert len(unplaceable(demands, [cpu(2)])) == 2  # fits one at a time, not all at once


@contextmanager
def ray_start_head(env: dict[str, str]) -> Iterator[int]:
    """A ``ray start --head`` of 1 CPU with ``env``, its address file in a folder of its own
    (``RAY_TMPDIR``, set in ``env``: what a plain ray.init() finds); yields its GCS port."""
    base = Path(tempfile.mkdtemp(prefix="memrl-lc-"))  # short: Ray's socket paths must fit
    marker = f"MEMRL_TEST_HEAD={uuid.uuid4().hex}"
    env.update({"RAY_TMPDIR": str(base), marker.split("=")[0]: marker.split("=")[1]})
    gcs, client, agent_http, agent_grpc, metrics, runtime_env_agent, node_manager, object_manager = _free_ports(8)
    command = [_ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(gcs), "--include-dashboard", "false",
               "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
               "--runtime-env-agent-port", str(runtime_env_agent), "--node-manager-port", str(node_manager),
               "--object-manager-port", str(object_manager), "--num-cpus", "1", "--disable-usage-stats",
               "--log-style", "record"]
    log_path = base / "head.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield gcs
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        for pid in _processes_with_env(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra})
    return env


@pytest.mark.slow
def test_train_beside_a_ray_start_cluster_joins_it_and_fails_early_when_too_small(tmp_path):
    # Auth is off on loopback, inside this test only.
    env = _clean_env(RAY_AUTH_MODE="disabled")
    with ray_start_head(env) as gcs:
        run = tmp_path / "run"
        train = subprocess.run(
            [sys.executable, "-m", "memrl.cli", "train", *TINY, *FAST, "memory.embedder=hash",
             f"output_dir={run}", f"model.tiny.cache_dir={tmp_path / 'cache'}"],
            cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
            timeout=300)
    err = train.stderr
    assert train.returncode == 1, err
    assert re.search(r"memrl: joined the cluster `ray start` runs on this machine at \S+:"
                     rf"{gcs} \(1 CPUs\); ray.num_cpus=8 does not apply to it", err), err
    assert "the Ray cluster cannot hold this run's actors: no room for" in err
    assert "rollout worker" in err and "node 0: CPU 1" in err and "When connecting" not in err
    assert "Traceback" not in err
    assert not (run / ".memrl.lock").exists()


@pytest.mark.slow
def test_train_beside_another_programs_ray_start_cluster_says_the_ways_out_at_once(tmp_path):
    # The other program's head has its own token; this run has another (its own home's file).
    theirs, home = tmp_path / "their_token", tmp_path / "home"
    theirs.write_text(secrets.token_hex(32))
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(theirs))
    with ray_start_head(env) as gcs:
        mine = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        started = time.monotonic()
        train = subprocess.run(
            [sys.executable, "-m", "memrl.cli", "train", *TINY, *FAST, f"output_dir={tmp_path / 'run'}",
             f"model.tiny.cache_dir={tmp_path / 'cache'}"],
            cwd=REPO, env={**mine, "HOME": str(home), "PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=300)
        seconds = time.monotonic() - started
    err = train.stderr
    assert train.returncode == 2, err
    assert rf":{gcs} refuses this run's Ray token" in err
    assert "ray.address=local" in err and "RAY_AUTH_TOKEN" in err
    assert "gcs_client" not in err and "Traceback" not in err and "looks like a bug" not in err
    assert len(err.splitlines()) <= 6, err
    # Checked before anything slow or written: no model build, no run directory.
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    assert seconds < 60, seconds
