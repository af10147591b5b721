"""``ray job submit`` against a real Ray head: the documented way to run memrl on a cluster.

A module fixture starts ``ray start --head --block`` on this machine with token
authentication on (its own token file, temp dir and ports, and none of this process's RAY_*
variables, so it never meets the in-process cluster of ``tests/conftest.py`` or anyone else's).
The test submits the default training (tiny and fast) with the shipped runtime env
``cluster/runtime_env.yaml``, then resubmits the same command with more steps and
``--resume auto``, with ``--no-wait`` + ``ray job logs --follow`` + ``ray job status``.

Teardown sends SIGTERM to that ``ray start --block`` process, which drains the node and stops
every process it started. Not ``ray stop``: it stops every Ray process on the machine by name,
the session's in-process cluster and other runs included.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from trainer_configs import FAST, TINY, assert_audit_clean

from memrl.checkpoint import CheckpointManager
from memrl.train.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = "cluster/runtime_env.yaml"  # relative: its `working_dir: .` is the repo root
HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 420
# Start-up is most of a job's time on 2 cores: no sentence-transformers (hash embedder), no
# evaluations, no TensorBoard. None of them changes what is submitted, run or resumed.
SPEED = ["memory.embedder=hash", "trainer.eval_before_after=false", "logging.tensorboard=false"]
PROMPTS_PER_STEP = 4  # FAST: grpo.batch_size 16 / grpo.num_generations 4


def _ray_cli() -> str:
    """The ``ray`` command of this interpreter (the same Ray the tests import)."""
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if found is None:
        pytest.fail("the `ray` command is not installed next to this Python")
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports that are free now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _processes_with_env(marker: str) -> list[int]:
    """Pids whose environment contains ``marker`` (every process the head started inherits it,
    whatever name it later gives itself)."""
    needle = marker.encode()
    pids = []
    if not Path("/proc").is_dir():
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


@dataclass
class RayHead:
    """A running head: its job API address and the environment that carries its token."""

    address: str  # http://127.0.0.1:PORT (dashboard and job API)
    env: dict[str, str]  # RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH=<this head's token>
    gcs: str = ""  # 127.0.0.1:PORT, what `ray start --address` joins

    def cli(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run ``ray ARGS`` from the repository root; stdout and stderr together."""
        return subprocess.run([_ray_cli(), *args], cwd=REPO, env=env or self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


@pytest.fixture(scope="module")
def ray_head():
    base = Path(tempfile.mkdtemp(prefix="memrl-head-"))  # short: Ray's socket paths must fit
    token_file = base / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    # Nothing of this process's Ray set-up (RAY_ADDRESS of another cluster, its auth settings)
    # reaches the head or the CLI; PYTHONPATH neither, so the job imports the uploaded copy.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env.update({
        "RAY_AUTH_MODE": "token",  # Ray's documented switch, on the head and on every client
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        # This machine has no model or dataset hub: every process of the head runs offline.
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
    })
    (gcs, dashboard, client, agent_http, agent_grpc, metrics, runtime_env_agent, node_manager,
     object_manager) = _free_ports(9)
    # Ray replaces a loopback --node-ip-address by the machine's address for its internal
    # ports; the dashboard and the job API, the ones a client uses, stay on 127.0.0.1.
    command = [
        _ray_cli(), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
        "--runtime-env-agent-port", str(runtime_env_agent),
        "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
        # rollout_node: one rollout worker may run here, the other on the spot node of
        # test_job_survives_a_drained_and_stopped_node.
        "--num-cpus", "8", "--resources", '{"rollout_node": 1}', "--temp-dir", str(base / "ray"),
        "--disable-usage-stats",
        "--log-style", "record",
    ]
    log_path = base / "head.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while "Ray runtime started" not in log_path.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield RayHead(address=f"http://127.0.0.1:{dashboard}", env=env, gcs=f"127.0.0.1:{gcs}")
    finally:
        head.send_signal(signal.SIGTERM)  # drains the node, then stops all it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        # A job driver runs in its own session; anything left that carries this head's token
        # path was started by this head.
        for pid in _processes_with_env(f"RAY_AUTH_TOKEN_PATH={token_file}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def _train_command(run: Path, cache: Path, max_steps: int) -> list[str]:
    """The default training, tiny and fast; what a cluster job runs, apart from the config."""
    return ["memrl", "train", "configs/default.yaml", *TINY, *FAST, *SPEED,
            f"trainer.max_steps={max_steps}", "trainer.save_every_steps=2",
            f"output_dir={run}", f"model.tiny.cache_dir={cache}", "--resume", "auto"]


def _job_status(head: RayHead, job_id: str) -> str:
    """SUCCEEDED / FAILED / STOPPED / PENDING / RUNNING, from ``ray job status``."""
    out = head.cli("job", "status", "--address", head.address, "--log-style", "record",
                   job_id).stdout
    words = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}
    final = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", out)
    if final:
        return words[final.group(1)]
    other = re.search(rf"Status for job '{re.escape(job_id)}': (?:JobStatus\.)?(\w+)", out)
    if other is None:
        raise AssertionError(f"unexpected `ray job status` output:\n{out}")
    return other.group(1)


def _train_steps(run: Path) -> list[dict]:
    return [m for m in read_metrics(run) if "reward/total/mean" in m]


def _latest_checkpoint_step(run: Path) -> int:
    manager = CheckpointManager(str(run))
    latest = manager.latest()
    assert latest is not None, f"no checkpoints/latest under {run}"
    step = manager.verify(latest)["step"]
    assert latest.endswith(f"/step_{step}")
    return step


def test_job_submit_trains_then_resumes(ray_head: RayHead, tmp_path: Path):
    run, cache = tmp_path / "run", tmp_path / "tiny-cache"

    # Authentication is on: a client without the token is refused.
    tokenless = {k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}
    refused = ray_head.cli("job", "list", "--address", ray_head.address, env=tokenless)
    assert refused.returncode != 0, refused.stdout[-2000:]
    assert "AuthenticationError" in refused.stdout, refused.stdout[-2000:]

    # 1) Fresh run, `ray job submit` waiting for the end: 2 steps, checkpoint at step 2.
    first_id = f"memrl-train-{uuid.uuid4().hex[:8]}"
    first = ray_head.cli("job", "submit", "--address", ray_head.address,
                         "--runtime-env", RUNTIME_ENV, "--submission-id", first_id,
                         "--log-style", "record", "--", *_train_command(run, cache, 2),
                         timeout=JOB_TIMEOUT_S)
    assert first.returncode == 0, first.stdout[-6000:]
    assert f"Job '{first_id}' succeeded" in first.stdout
    assert _job_status(ray_head, first_id) == "SUCCEEDED"
    assert "done: 2 steps" in first.stdout and "resumed from" not in first.stdout
    steps = _train_steps(run)
    assert [m["step"] for m in steps] == [1, 2]
    assert [m["data/consumed_prompts"] for m in steps] == [PROMPTS_PER_STEP * k for k in (1, 2)]
    assert _latest_checkpoint_step(run) == 2
    assert_audit_clean(run, 2)

    # 2) The same command with 4 steps, submitted without waiting: continues from step 2.
    second_id = f"memrl-resume-{uuid.uuid4().hex[:8]}"
    submitted = ray_head.cli("job", "submit", "--address", ray_head.address, "--no-wait",
                             "--runtime-env", RUNTIME_ENV, "--submission-id", second_id,
                             "--log-style", "record", "--", *_train_command(run, cache, 4))
    assert submitted.returncode == 0, submitted.stdout[-4000:]
    assert f"Job '{second_id}' submitted successfully" in submitted.stdout
    follow = ray_head.cli("job", "logs", "--address", ray_head.address, "--follow",
                          "--log-style", "record", second_id, timeout=JOB_TIMEOUT_S)
    status = _job_status(ray_head, second_id)
    assert status == "SUCCEEDED", f"{status}:\n{follow.stdout[-6000:]}"
    logs = ray_head.cli("job", "logs", "--address", ray_head.address, second_id).stdout
    assert "resumed from step 2" in logs and "done: 4 steps" in logs, logs[-6000:]

    # Steps 3 and 4 were appended after 1 and 2: the prompt stream and the weight version went
    # on from the checkpoint instead of starting over.
    steps = _train_steps(run)
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    consumed = [m["data/consumed_prompts"] for m in steps]
    assert consumed == [PROMPTS_PER_STEP * k for k in (1, 2, 3, 4)]
    assert [m["weights/version"] for m in steps] == [1, 2, 3, 4]
    last_line = (run / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last_line)["step"] == 4
    assert _latest_checkpoint_step(run) == 4
    assert_audit_clean(run, 4)  # across the resubmission: each prompt once, in order


def _start_worker_node(head: RayHead, log_path: Path) -> subprocess.Popen:
    """A second node (`ray start --address`) with one CPU and the spot resource."""
    node_manager, object_manager, metrics, agent_http, agent_grpc, runtime_env_agent = _free_ports(6)
    command = [_ray_cli(), "start", "--address", head.gcs, "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", "1", "--resources", '{"rollout_node": 1}',
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc),
               "--runtime-env-agent-port", str(runtime_env_agent), "--disable-usage-stats",
               "--log-style", "record"]
    with log_path.open("w") as log:
        node = subprocess.Popen(command, env=head.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while "Ray runtime started" not in log_path.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start --address did not come up:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.5)
    return node


STEPS = 200  # the job must outlast the drain, `memrl scale` and the node stopping (0.15-1 s a step)


def _metrics_so_far(run: Path) -> list[dict]:
    return _train_steps(run) if (run / "metrics.jsonl").is_file() else []


def _wait_for_step(head: RayHead, job_id: str, run: Path, done: Callable[[list[dict]], bool]) -> list[dict]:
    """The run's steps once ``done(steps)``; fails if the job ends or time runs out first."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not done(steps := _metrics_so_far(run)):
        status = _job_status(head, job_id)
        assert time.monotonic() < deadline and status in ("PENDING", "RUNNING"), \
            head.cli("job", "logs", "--address", head.address, job_id).stdout[-6000:]
        time.sleep(0.5)
    return steps


def test_job_survives_a_drained_and_stopped_node(ray_head: RayHead, tmp_path: Path):
    """Two rollout workers, one on a second node (`ray start --address`). Mid-run the node is
    drained as a preemption notice does (`ray drain-node`, 30 s deadline): no more work goes
    there; `memrl scale 1` (through the Jobs API, with the token) then drops the worker whose
    replacement has nowhere to go, and the node is stopped (SIGTERM to its `ray start`). The job
    finishes every step."""
    run, cache = tmp_path / "run", tmp_path / "tiny-cache"
    node = _start_worker_node(ray_head, tmp_path / "node.log")
    job_id = f"memrl-spot-{uuid.uuid4().hex[:8]}"
    command = _train_command(run, cache, STEPS)
    command[command.index("trainer.save_every_steps=2")] = "trainer.save_every_steps=100"
    command[-2:-2] = ["rollout.num_workers=2", "rollout.resources={rollout_node: 1}"]
    try:
        submitted = ray_head.cli("job", "submit", "--address", ray_head.address, "--no-wait",
                                 "--runtime-env", RUNTIME_ENV, "--submission-id", job_id,
                                 "--log-style", "record", "--", *command)
        assert submitted.returncode == 0, submitted.stdout[-4000:]
        _wait_for_step(ray_head, job_id, run, lambda steps: len(steps) >= 2)
        nodes = json.loads(ray_head.cli("list", "nodes", "--address", ray_head.address,
                                        "--format", "json").stdout)
        (spot,) = [n["node_id"] for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"]]
        drained = ray_head.cli("drain-node", "--address", ray_head.gcs, "--node-id", spot,
                               "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message",
                               "spot notice", "--deadline-remaining-seconds", "30")
        assert drained.returncode == 0, drained.stdout
        seen = _wait_for_step(ray_head, job_id, run,
                              lambda steps: bool(steps) and steps[-1]["rollout/draining_nodes_seen"] >= 1)
        scaled = subprocess.run([sys.executable, "-m", "memrl.cli", "scale", "1", "--address",
                                 ray_head.address], cwd=REPO, env=ray_head.env,
                                capture_output=True, text=True, timeout=240)
        node.send_signal(signal.SIGTERM)  # the node goes
        node.wait(timeout=120)
        follow = ray_head.cli("job", "logs", "--address", ray_head.address, "--follow",
                              "--log-style", "record", job_id, timeout=JOB_TIMEOUT_S)
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
    status = _job_status(ray_head, job_id)
    assert status == "SUCCEEDED", f"{status}:\n{follow.stdout[-6000:]}"
    assert scaled.returncode == 0 and f"run {run}: rollout.num_workers -> 1" in scaled.stdout, \
        scaled.stdout + scaled.stderr
    steps = _train_steps(run)
    assert [m["step"] for m in steps] == list(range(1, STEPS + 1))
    assert [m["data/consumed_prompts"] for m in steps] == [PROMPTS_PER_STEP * k for k in range(1, STEPS + 1)]
    assert steps[0]["rollout/num_workers"] == 2 and seen[-1]["rollout/preempted_workers"] == 1
    # After the notice no request went to the drained node: nothing failed over.
    last = steps[-1]
    assert (last["rollout/failures"], last["rollout/num_workers"], last["rollout/num_workers_requested"]) \
        == (0, 1, 1), last
    assert max(m["weights/staleness"] for m in steps) == 0
    assert_audit_clean(run, STEPS)  # through the drain, the scale-down and the node's end
