"""The run's connection to its Ray cluster: joining or starting it, the nodes' resources and
drains (:class:`ClusterWatch`)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
from ray._private import state as ray_state

from memrl.cluster.capacity import ClusterState, draining_deadlines
from memrl.config import Config
from memrl.errors import InputError
from memrl.terminal import LOG_DIR_ENV, terminal

log = logging.getLogger(__name__)


def init_ray(cfg: Config, log_dir: Path | None = None) -> None:
    """Connect to Ray as the config says, and say which cluster the run uses.

    ``ray.address`` (or ``RAY_ADDRESS``, set for a ``ray job submit`` job) names a cluster to
    join; ``ray.address=local`` starts a new one for this run. Without either, the run joins a
    cluster that ``ray start`` runs on this machine, as Ray's own ``ray.init()`` does (its
    resources then apply, not ``ray.num_cpus``), and otherwise starts its own with
    ``ray.num_cpus``. One torch thread per process unless an actor is given more CPUs.

    ``log_dir``: each actor writes its output to its own file there
    (:func:`memrl.terminal.redirect_actor_output`) and Ray streams none of it to the driver;
    None: Ray streams every actor's output to the driver's terminal."""
    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MEMRL_CACHE", "DS_ACCELERATOR"):
        if key in os.environ:
            env[key] = os.environ[key]
    if log_dir is not None:
        env[LOG_DIR_ENV] = str(log_dir.absolute())
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": log_dir is None}
    address, how = _cluster_to_join(cfg)
    if address is not None:
        if address not in _TOKEN_CHECKED:
            _check_token(address, how)
        ray.init(address=address, **kwargs)
        cpus = ray.cluster_resources().get("CPU", 0)
        ignored = f"; ray.num_cpus={cfg.ray.num_cpus} does not apply to it" if cfg.ray.num_cpus else ""
        terminal.say(f"memrl: joined {how} at {address} ({cpus:g} CPUs){ignored}; set "
                     "ray.address=local to start a separate cluster for this run")
    else:
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, **kwargs)


_TOKEN_CHECKED: set[str] = set()  # addresses whose token check passed in this process


def check_cluster_token(cfg: Config) -> None:
    """Fail at once, before anything slow (a model build), when the cluster this run would join
    refuses its Ray token; :func:`init_ray` checks again when it joins."""
    address, how = _cluster_to_join(cfg)
    if address is not None and not ray.is_initialized():
        _check_token(address, how)
        _TOKEN_CHECKED.add(address)


def _cluster_to_join(cfg: Config) -> tuple[str | None, str]:
    """The address of the existing cluster the run joins (None: it starts its own) and how it
    was named."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or _local_cluster_address()
    if not address or address == "local":
        return None, "a cluster of its own"
    named = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    return address, ("the cluster named by ray.address/RAY_ADDRESS" if named
                     else "the cluster `ray start` runs on this machine")


class ClusterRefusesToken(InputError):
    """The Ray cluster the run would join refuses this process's authentication token."""

    label = "cannot join the Ray cluster"


def _check_token(address: str, how: str) -> None:
    """Fail within a second, naming the ways out, when the cluster at ``address`` refuses this
    process's Ray token (another program's cluster, started with another token): ``ray.init``
    would retry for 20 s, logging each refusal, and then report a connection failure."""
    if "://" in address:  # a Ray client or dashboard address: ray.init reports on its own
        return
    # GcsClient: Ray's own client of the GCS, the one ray.init connects with; the compiled
    # module's stub (_raylet.pyi) lists few of its classes.
    from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    from ray._raylet import GcsClient  # pyright: ignore[reportAttributeAccessIssue]
    from ray.exceptions import AuthenticationError

    try:
        ensure_token_if_auth_enabled(create_token_if_missing=False)  # what ray.init does first
        # Ray's C++ client logs each refusal to stderr (fd 2); the message below says it instead.
        with _stderr_silenced():
            GcsClient(address=address).cluster_id  # noqa: B018 - the first request: a token check
    except AuthenticationError as exc:
        raise ClusterRefusesToken(
            f"{how} at {address} refuses this run's Ray token (that cluster was started with a "
            f"token this process does not have; Ray says: {str(exc).split('. ')[0]})",
            hint="set ray.address=local to start a separate cluster for this run, or give this "
                 "process that cluster's token (RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH naming its "
                 "file; the default file is ~/.ray/auth_token)") from exc
    except Exception:  # noqa: BLE001 - anything else is ray.init's to report
        log.debug("token check of %s skipped", address, exc_info=True)


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null inside (a C++ library's own logging included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _local_cluster_address() -> str | None:
    """The address ``ray start`` recorded on this machine (what a plain ``ray.init()`` joins)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        # Ray annotates addr as str, but takes None as its docstring says (what ray.init() does)
        return canonicalize_bootstrap_address(None)  # pyright: ignore[reportArgumentType]
    except Exception:  # noqa: BLE001 - private API moved or stale file: start a local cluster
        return None


def node_totals() -> list[dict[str, float]]:
    """Each live node's resource totals (for :func:`memrl.cluster.placement.check_fits`)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def cluster_state() -> ClusterState:
    """The live nodes' resource totals and the draining nodes' deadlines, from the GCS (a node
    being drained, e.g. on a preemption notice, is still alive until it goes)."""
    totals = {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")}
    # Ray's own accessor for the GCS's list of draining nodes (what `ray drain-node` and a
    # raylet's SIGTERM handler create); there is no public API for it in Ray 2.60.
    raw = ray_state.state.get_draining_nodes()
    return ClusterState(totals=totals, draining={n: d for n, d in draining_deadlines(raw).items()
                                                 if n in totals})


class ClusterWatch:
    """:func:`cluster_state`, asked of the GCS at most once every ``every_s`` seconds (the pool
    looks before every dispatch; a preemption notice gives tens of seconds)."""

    def __init__(self, every_s: float = 1.0, read: Callable[[], ClusterState] = cluster_state):
        self.every_s = every_s
        self._read = read
        self._last: tuple[float, ClusterState] | None = None

    def state(self, *, fresh: bool = False) -> ClusterState:
        """The cluster now (``fresh``) or as seen at most ``every_s`` seconds ago."""
        now = time.monotonic()
        if fresh or self._last is None or now - self._last[0] >= self.every_s:
            self._last = (now, self._read())
        return self._last[1]
