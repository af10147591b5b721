"""The running driver's control point on its Ray cluster: ``memrl scale`` reaches it there.

The driver creates one :class:`RunControl` actor, named after its ``output_dir`` in the
``memrl`` namespace, and reads it at every step. ``memrl scale`` submits a one-line Ray job
(the Jobs API: the address and token a ``ray job submit`` user already has) that finds the
actor by name and sets the run's ``rollout.num_workers``; the job needs nothing of memrl
installed on the cluster, only Ray, because an actor handle found by name carries its methods.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import ray

from memrl.cluster.capacity import WorkerCount, parse_worker_count

NAMESPACE = "memrl"
PREFIX = "memrl-run:"


def control_name(output_dir: str) -> str:
    """The Ray name of the control actor of the run writing to ``output_dir`` (as configured)."""
    return f"{PREFIX}{output_dir}"


class RunControl:
    """What a running driver is asked to do (a worker count) and what it last reported."""

    def __init__(self) -> None:
        self._requested: tuple[int, WorkerCount | None] = (0, None)  # (version, count)
        self._status: dict[str, Any] = {}

    def set_num_workers(self, value: str) -> dict[str, Any]:
        """Ask for ``value`` rollout workers (a whole number >= 1 or ``auto``). Returns the
        driver's last status with the request; ValueError names a bad value."""
        count = parse_worker_count(value)
        self._requested = (self._requested[0] + 1, count)
        return {"requested": count, **self._status}

    def requested(self) -> tuple[int, WorkerCount | None]:
        """``(version, count)`` of the last request (version 0: none yet)."""
        return self._requested

    def report(self, status: dict[str, Any]) -> None:
        """The driver's state after a step: step, workers running, target."""
        self._status = dict(status)


def start_control(output_dir: str) -> Any:
    """Create the run's named control actor on the driver's node (no CPU: it only holds a few
    values; anywhere else it would die with a spot node); an error names the run when another
    driver on this cluster already writes to ``output_dir``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = control_name(output_dir)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    try:
        return ray.remote(RunControl).options(name=name, namespace=NAMESPACE, num_cpus=0,
                                              max_restarts=0, scheduling_strategy=here).remote()
    except ValueError as exc:  # Ray: the name is taken
        raise RuntimeError(f"another run on this Ray cluster already has output_dir "
                           f"{output_dir!r} (control actor {name!r} exists): give this run "
                           "its own output_dir") from exc


def scale_via_job(address: str | None, run: str | None, value: str, *,
                  timeout_s: float = 180.0) -> dict[str, Any]:
    """Scale ``run`` to ``value`` workers through the Ray Jobs API at ``address`` (None: Ray's
    own default, ``RAY_ADDRESS``); the token comes from Ray's settings, as for ``ray job
    submit``. Returns the job's answer; RuntimeError when the job does not give one."""
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    parse_worker_count(value)  # a bad value is refused here, before any job starts
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=scale_entrypoint(run, value),
                               metadata={"memrl": "scale"})
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise RuntimeError(f"the scale job {job_id} did not finish within {timeout_s:.0f} s "
                               f"(status {status})")
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    for line in logs.splitlines():
        if line.startswith("MEMRL_SCALE "):
            return json.loads(line[len("MEMRL_SCALE "):])
    raise RuntimeError(f"the scale job {job_id} ended {status} without an answer:\n{logs[-2000:]}")


def scale_entrypoint(run: str | None, value: str) -> str:
    """The ``python -c`` command that a Ray job runs on the cluster to scale ``run`` (an
    output_dir; None: the only memrl run on the cluster) to ``value`` workers. It prints one
    JSON line: ``{"run": ..., "requested": ..., "step": ...}`` or ``{"error": ...}``."""
    code = f"""
import json, ray
ray.init()
runs = sorted(a["name"][{len(PREFIX)}:] for a in ray.util.list_named_actors(all_namespaces=True)
              if a["namespace"] == {NAMESPACE!r} and a["name"].startswith({PREFIX!r}))
run = {run!r}
if run is None and len(runs) != 1:
    out = {{"error": "%d memrl runs on this cluster (%s): name one with --run OUTPUT_DIR"
            % (len(runs), ", ".join(runs) or "none")}}
elif run is not None and run not in runs:
    out = {{"error": "no memrl run with output_dir %r on this cluster (running: %s)"
            % (run, ", ".join(runs) or "none")}}
else:
    run = run or runs[0]
    actor = ray.get_actor({PREFIX!r} + run, namespace={NAMESPACE!r})
    try:
        out = {{"run": run, **ray.get(actor.set_num_workers.remote({value!r}), timeout=60)}}
    except ray.exceptions.RayTaskError as exc:
        out = {{"error": str(exc.cause)}}
print("MEMRL_SCALE " + json.dumps(out))
"""
    return f"python -c {shlex.quote(code)}"
