"""What the world outside asks of a running job between steps, and how it stops for a restart.

- **Scaling**: ``OUTPUT_DIR/control.yaml`` (``rollout: {num_workers: N}``) and ``memrl scale``
  (through the run's named control actor, :mod:`memrl.actors.control`) change the rollout
  pool's target; whichever changed last wins. An invalid file is reported once per change.
- **Preemption**: SIGTERM to the driver, or a drain notice for the node of the driver, a
  learner rank or the memory service, starts the preemption: the step in flight finishes, the
  driver checkpoints and raises :class:`Preempted` (exit 143, so the job system restarts it with
  ``--resume auto``). A watchdog thread exits the process anyway once the node's deadline has
  passed, unless the run was closed by then.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import ray
import yaml

from memrl.cluster.capacity import ClusterState, WorkerCount, critical_drains, parse_worker_count
from memrl.config import Config

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 30.0  # for the driver's own control actor (memrl scale requests)
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the job system sees a failure and restarts it
PREEMPTION_WATCHDOG = "memrl-preemption-watchdog"  # the thread that exits past the deadline


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits with a non-zero code."""


class ScalablePool(Protocol):
    """What run control needs of the rollout pool (:class:`memrl.actors.rollout_pool.RolloutPool`)."""

    requested: WorkerCount

    def __len__(self) -> int: ...
    def num_running(self) -> int: ...
    def set_target(self, size: WorkerCount) -> None: ...
    def refresh(self) -> None: ...
    def cluster(self, *, fresh: bool = False) -> ClusterState: ...


def read_control(text: str) -> tuple[WorkerCount | None, str | None]:
    """``(num_workers, None)`` from a control file's text, or ``(None, reason)`` when invalid."""
    expected = "expected 'rollout: {num_workers: N}' with a whole number N >= 1 or auto"
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"not valid YAML ({str(exc).splitlines()[0]}); {expected}"
    rollout = tree.get("rollout") if isinstance(tree, dict) else None
    value = rollout.get("num_workers") if isinstance(rollout, dict) else None
    if value is None:
        return None, f"no rollout.num_workers; {expected}"
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        return None, f"rollout.num_workers = {value} is below 1 (a run needs a worker); {expected}"
    try:
        return parse_worker_count(value), None
    except ValueError:
        return None, f"rollout.num_workers = {value!r} is not a whole number; {expected}"


class RunController:
    """Scaling requests and preemption for one run; the driver calls it between steps.

    ``control_file`` is the run directory's ``control.yaml``; ``control`` is the run's control
    actor (``memrl scale`` writes to it); ``roles`` returns the node of each actor whose loss
    stops the run (it is asked after every step: the memory service moves when it restarts)."""

    def __init__(self, cfg: Config, control_file: Path, control: Any,
                 roles: Callable[[], dict[str, str | None]]):
        self.cfg, self.control, self._roles = cfg, control, roles
        self.control_file = control_file  # OUTPUT_DIR/control.yaml: {rollout: {num_workers: N}}
        self.step = 0  # the last finished step, for messages
        self.preempting_since: float | None = None
        self._control_seen: tuple[float, str] | None = None
        self._scale_seen = 0  # version of the last `memrl scale` request applied
        self._previous_sigterm: Any = None
        # Set by close(): a preempted run that ended in time must not be killed later by its
        # deadline watchdog (in a long-lived process, e.g. a test session or a notebook).
        self._closed = threading.Event()

    @property
    def preempting(self) -> bool:
        """A preemption has begun: checkpoint after this step and exit."""
        return self.preempting_since is not None

    # -- scaling --------------------------------------------------------------------------------
    def apply(self, pool: ScalablePool) -> None:
        """Before each step: take a new ``rollout.num_workers`` from ``control.yaml`` or
        ``memrl scale`` (whichever changed last), then bring the pool to its target for the
        cluster as it is now."""
        asked = self._asked_by_file()
        # Its own short limit, not trainer.timeout_s: the control actor answers at once, and a
        # phase's limit must time out the phase it names.
        version, scaled = ray.get(self.control.requested.remote(), timeout=CONTROL_TIMEOUT_S)
        if version != self._scale_seen:
            self._scale_seen, asked = version, (scaled, "memrl scale")
        if asked is not None and asked[0] != pool.requested:
            log.info("rollout.num_workers: %s -> %s (from %s)", pool.requested, asked[0], asked[1])
            pool.set_target(asked[0])
        before = pool.num_running()
        pool.refresh()
        if asked is not None and before < len(pool):
            log.warning("rollout workers: %d asked for (%s), %d running; the others wait for the "
                        "cluster to place them (%s)", len(pool), asked[1], before,
                        f"{self.cfg.rollout.num_cpus_per_worker:g} CPU, "
                        f"{self.cfg.rollout.num_gpus_per_worker:g} GPU each")

    def _asked_by_file(self) -> tuple[WorkerCount, str] | None:
        """A changed, valid ``control.yaml``'s count (None: none, unchanged or invalid)."""
        path = self.control_file
        try:
            seen = (path.stat().st_mtime, path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return None
        changed = seen != self._control_seen
        self._control_seen = seen
        wanted, problem = read_control(seen[1])
        if problem is not None or wanted is None:
            if changed:
                log.warning("ignoring %s: %s", path, problem)
            return None
        return (wanted, str(path)) if changed else None

    def report(self, step: int, pool: ScalablePool) -> None:
        """After each step: tell the control actor where the run is (``memrl scale`` prints it)."""
        self.step = step
        self.control.report.remote({"step": step, "running": pool.num_running(), "target": len(pool)})

    # -- preemption -----------------------------------------------------------------------------
    def arm_sigterm(self) -> None:
        """Make SIGTERM start the preemption (main thread only; :meth:`close` restores the
        handler it replaced, so a finished run never turns a later SIGTERM into its exit)."""
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.begin_preemption("SIGTERM", self.cfg.trainer.preemption_deadline_s)

    def watch_drains(self, pool: ScalablePool) -> None:
        """After each step: a draining node under the driver, a learner or the memory service
        means checkpoint now and exit for a restart, as on SIGTERM, within the node's deadline."""
        state = pool.cluster(fresh=True)
        if self.preempting or not state.draining:
            return
        hits = critical_drains(self._roles(), state)
        if hits:
            role, node, deadline = hits[0]
            left = deadline - time.time()
            self.begin_preemption(f"the node of {role} ({node[:12]}) is draining, "
                                  f"{left:.0f} s before its deadline", left)

    def begin_preemption(self, why: str, deadline_s: float) -> None:
        """Finish the step in flight, checkpoint and exit with ``PREEMPTED_EXIT_CODE``; past
        ``deadline_s`` (at most ``trainer.preemption_deadline_s``) exit anyway, unless
        :meth:`close` has run by then."""
        if self.preempting:
            return
        self.preempting_since = time.monotonic()
        deadline = max(0.0, min(deadline_s, self.cfg.trainer.preemption_deadline_s))
        log.warning("%s: finishing step %d, then checkpointing (deadline %.0f s); restart the "
                    "job with --resume auto", why, self.step + 1, deadline)

        def watchdog() -> None:
            # Past the deadline the node may vanish at any moment: leave now; `latest` still
            # names the last complete checkpoint.
            if self._closed.wait(deadline):
                return
            print(f"preemption deadline of {deadline:.0f} s passed before the checkpoint "
                  "completed; exiting", file=sys.stderr, flush=True)
            os._exit(PREEMPTED_EXIT_CODE)

        threading.Thread(target=watchdog, name=PREEMPTION_WATCHDOG, daemon=True).start()

    def close(self) -> None:
        """Restore the SIGTERM handler, disarm the watchdog and stop the control actor."""
        self._closed.set()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        ray.kill(self.control, no_restart=True)
