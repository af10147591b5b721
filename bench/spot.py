"""Spot-instance faults on a multi-node Ray cluster simulated on this machine.

``python -m bench.spot`` starts a ``ray.cluster_utils.Cluster`` (a head for the driver, one
on-demand node for the learner, one for the memory service, and one-CPU "spot" nodes for the
rollout workers, each kind marked by the custom resource the cluster files use), trains the
tiny default in each scenario and injects one fault at the launch of a chosen step (the step's
requests are in flight):

- ``rollout_lost``: a rollout node disappears; later a node joins again (pool refills).
- ``rollout_drain``: a rollout node is drained (preemption, 1 s deadline), then goes; a node joins.
- ``auto``: ``rollout.num_workers=auto`` while a node joins and leaves, then ``memrl scale``'s
  control actor asks for 1 worker.
- ``memory_lost``: the memory service's node disappears; it restarts on a new node from its
  last snapshot. ``memory_uri``: the same with the checkpoints (the memory's snapshot in them)
  on a remote filesystem, ``trainer.checkpoint_uri=ftp://...`` served from this process (a
  stand-in for ``s3://``: nothing here reaches object storage); the memory restarts from the
  URI. ``memory_unreachable``: the snapshot gone: the run fails saying so.
- ``learner_lost``: the learner's node disappears: the run stops naming rank and node, and
  ``--resume auto`` continues on a new node. ``learner_drain``: the learner's node is drained:
  the driver checkpoints and exits with 143, and the resumed run finishes.

For each it prints the step the fault hit, steps completed, the audit of its run directory
(``memrl audit``: the prompt ledger of what the learners trained on, every committed step and
resume included, against the prompt stream replayed from the run's config: prompts lost,
duplicated, out of order, stale, with a wrong count, outside the schedule), and seconds of work
lost (generation thrown away, or time since the checkpoint the run resumed from). ``--json
PATH`` writes every number.
Only CPU and custom resources mean anything on such a cluster (each fake node claims all the
memory); authentication is off because everything listens on this machine only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from bench import _common  # noqa: F401  (before torch: one thread per process, offline hubs)
from memrl.actors.control import NAMESPACE, control_name
from memrl.audit import KINDS, TITLES, audit_run
from memrl.checkpoint import CheckpointManager
from memrl.config import load_config
from memrl.errors import explain
from memrl.report.table import markdown_table
from memrl.run_dir import CHECKPOINT_MANIFEST_FILE, CHECKPOINT_MEMORY_DIR, RunDir
from memrl.train.loop import Trainer
from memrl.train.metrics import read_metrics
from memrl.train.run_control import PREEMPTED_EXIT_CODE

SPOT, LEARNER, MEMORY = "rollout_node", "learner_node", "memory_node"
# The default made tiny and fast (tests/trainer_configs.py's TINY and FAST), placed on the
# node kinds by the cluster files' custom resources.
OVERRIDES = [
    "model.tiny.vocab_size=300", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
    "model.tiny.num_heads=2", "model.tiny.intermediate_size=64", "model.tiny.warmstart_steps=5",
    "model.tiny.warmstart_examples=64", "model.tiny.warmstart_batch_size=8",
    "task.eval_size=8", "grpo.num_generations=4", "grpo.batch_size=16",
    "grpo.max_completion_length=24", "learner.micro_batch_size=16", "logging.progress_bar=false",
    "logging.tensorboard=false", "memory.warmup=1", "trainer.warmup_ratio=0.0", "trainer.lr=1e-3",
    "trainer.timeout_s=120", "rollout.engine=hf", "memory.embedder=hash",
    "trainer.eval_before_after=false", "trainer.save_every_steps=1",
    # Two synchronous workers, as FAST pins: a lost node leaves a worker that carries on.
    "rollout.mode=sync", "rollout.num_workers=2", "model.dtype=float32",
    f"rollout.resources={{{SPOT}: 1}}", f"learner.resources={{{LEARNER}: 1}}",
    f"memory.resources={{{MEMORY}: 1}}",
]
Fault = Callable[[Trainer], None]
SCENARIOS = ("rollout_lost", "rollout_drain", "auto", "memory_lost", "memory_uri",
             "memory_unreachable", "learner_lost", "learner_drain")
STORE_USER = "memrl"  # of the FTP server that stands in for object storage (this machine only)


@dataclass
class Outcome:
    """What one scenario measured."""

    scenario: str
    fault: str
    hit_step: int = 0
    steps_completed: int = 0
    max_steps: int = 0
    audit: dict[str, Any] = field(default_factory=dict)  # memrl audit of the run directory
    work_lost_s: float = 0.0
    error: str = ""  # what the run said when it stopped (expected for some faults)
    exit_code: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # scenario-specific numbers


class SpotCluster:
    """The simulated cluster: nodes by name, added and removed as the scenarios need."""

    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, connect=True,
                               head_node_args={"num_cpus": 2, "include_dashboard": False})
        self.nodes: dict[str, Any] = {}

    def add(self, name: str, resource: str, cpus: int = 1) -> str:
        node = self.cluster.add_node(num_cpus=cpus, resources={resource: 1.0})
        self.nodes[name] = node
        self.cluster.wait_for_nodes()
        return node.node_id

    def spot_nodes(self, count: int) -> list[str]:
        """Exactly ``count`` rollout nodes alive (earlier scenarios removed or added some)."""
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        for name in [n for n, node in self.nodes.items() if n.startswith("spot") and node.node_id not in alive]:
            self.remove(name)  # a drained node that Ray stopped by itself
        spots = [n for n in self.nodes if n.startswith("spot")]
        for name in spots[count:]:
            self.remove(name)
        for _ in range(count - len(spots)):
            self.add(self.new_spot_name(), SPOT)
        return [n for n in self.nodes if n.startswith("spot")]

    def new_spot_name(self) -> str:
        self._spots = getattr(self, "_spots", 0) + 1
        return f"spot-{self._spots}"

    def remove(self, name: str) -> None:
        """Kill the node's processes (a drained node may have stopped by itself already)."""
        self.cluster.remove_node(self.nodes.pop(name))

    def drain(self, name: str, deadline_s: float) -> None:
        """What a preemption notice does: the GCS marks the node draining with a deadline."""
        from ray._raylet import GcsClient
        from ray.core.generated import autoscaler_pb2

        accepted, why = GcsClient(address=self.cluster.address).drain_node(
            self.nodes[name].node_id,
            autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
            "bench/spot.py", int((time.time() + deadline_s) * 1000))
        if not accepted:
            raise RuntimeError(f"drain of {name} refused: {why}")

    def node_of(self, node_id: str) -> str:
        return next((name for name, n in self.nodes.items() if n.node_id == node_id), node_id[:8])


class RemoteStore:
    """An FTP server on this machine serving ``root``: a filesystem that fsspec reaches only by
    its URI (``ftp:///PATH``), as it reaches ``s3://``, from every node's processes. fsspec's
    configuration names the server: set here for this process and through ``FSSPEC_FTP`` for the
    nodes started afterwards (their workers inherit the environment)."""

    def __init__(self, root: Path):
        import fsspec
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import ThreadedFTPServer

        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        password = os.urandom(8).hex()
        authorizer = DummyAuthorizer()
        authorizer.add_user(STORE_USER, password, str(root), perm="elradfmwMT")
        handler = type("StoreHandler", (FTPHandler,), {"authorizer": authorizer})
        # Not a line per FTP command: pyftpdlib sets its own INFO logging up unless its logger
        # already has a handler.
        ftp_log = logging.getLogger("pyftpdlib")
        ftp_log.addHandler(logging.NullHandler())
        ftp_log.setLevel(logging.WARNING)
        self.server = ThreadedFTPServer(("127.0.0.1", 0), handler)
        options = {"host": "127.0.0.1", "port": self.server.socket.getsockname()[1],
                   "username": STORE_USER, "password": password}
        fsspec.config.conf["ftp"] = options
        os.environ["FSSPEC_FTP"] = json.dumps(options)
        threading.Thread(target=self.server.serve_forever, name="bench-remote-store", daemon=True).start()

    def close(self) -> None:
        self.server.close_all()


class Injector:
    """Wraps a trainer's pool: runs ``faults[step](trainer)`` right after that step's requests
    are sent, and notes the node of each request's worker per step. (What the learners trained
    on is the ledger's to say: :func:`memrl.audit.audit_run` after the scenario.)"""

    def __init__(self, trainer: Trainer, faults: dict[int, Fault]):
        self.trainer, self.faults = trainer, faults
        self.learner_nodes = list(trainer.learners.node_ids)
        self.stopped_at = 0.0  # when the run stopped on an error (epoch s)
        self.hit_step = 0
        self.nodes_by_step: list[list[str | None]] = []  # node of each result's worker
        pool = trainer.pool
        start, finish = pool.start, pool.finish

        def start_then_inject(requests, submit):
            pending = start(requests, submit)
            step = trainer.step + 1
            if step in self.faults:
                self.hit_step = self.hit_step or step  # the first fault is the one reported
                self.faults.pop(step)(trainer)
            return pending

        def finish_and_note(pending):
            results = finish(pending)
            nodes = trainer.pool.worker_nodes()
            self.nodes_by_step.append([nodes.get(r.info["worker_id"]) for r in results])
            return results

        pool.start, pool.finish = start_then_inject, finish_and_note


def _config(work: Path, *extra: str):
    """The scenario's config: its run under ``work``, the tiny model cached beside it."""
    return load_config(None, [f"output_dir={work / 'run'}", f"model.tiny.cache_dir={work.parent / 'cache'}",
                              *OVERRIDES, *extra])


def _steps(run: Path) -> list[dict]:
    return [m for m in read_metrics(run) if "reward/total/mean" in m] if RunDir(run).metrics.is_file() else []


def _train(cfg, faults: dict[int, Fault], resume: str = "none") -> tuple[Trainer, Injector, BaseException | None]:
    trainer = Trainer(cfg, resume=resume)
    injector = Injector(trainer, faults)
    error = None
    try:
        trainer.run()
    except BaseException as exc:  # noqa: BLE001 - some faults end the run on purpose
        error = exc
        injector.stopped_at = time.time()
        print(f"run {cfg.output_dir} stopped: " + "".join(traceback.format_exception(exc))[-3000:],
              file=sys.stderr, flush=True)
    finally:
        trainer.close()
    return trainer, injector, error


def _fill(out: Outcome, injector: Injector, cfg) -> None:
    """The scenario's settings and the audit of its run directory as it stands now (every
    committed step of every run in it)."""
    out.max_steps = cfg.trainer.max_steps
    out.hit_step = out.hit_step or injector.hit_step
    out.audit = audit_run(cfg.output_dir).to_dict()


def rollout_lost(c: SpotCluster, work: Path) -> Outcome:
    victim, _ = c.spot_nodes(2)
    refill: dict[str, float] = {}
    cfg = _config(work, "trainer.max_steps=10")
    out = Outcome("rollout_lost", "rollout node removed mid-step; a node joins a step later")
    trainer, injector, error = _train(cfg, {3: lambda t: c.remove(victim),
                                           4: lambda t: c.add(c.new_spot_name(), SPOT),
                                           8: lambda t: refill.update(seconds=_wait_for_workers(t, 2))})
    _fill(out, injector, cfg)
    steps = _steps(Path(cfg.output_dir))
    out.steps_completed, out.error = len(steps), repr(error) if error else ""
    out.work_lost_s = _last(steps, "rollout/lost_work_s")
    out.facts = {"num_workers": [m["rollout/num_workers"] for m in steps],
                 "failures": [m["rollout/failures"] for m in steps],
                 "preempted_workers": steps[-1]["rollout/preempted_workers"] if steps else 0,
                 "refill_wait_s": refill.get("seconds"),
                 "staleness": [m["weights/staleness"] for m in steps]}
    return out


def _wait_for_workers(trainer: Trainer, count: int, timeout_s: float = 120.0) -> float:
    """Seconds until ``count`` workers answer (a restarted worker loads its model first)."""
    started = time.monotonic()
    while trainer.pool.num_running() < count:
        if time.monotonic() - started > timeout_s:
            return float("inf")
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def _last(steps: list[dict], key: str) -> float:
    """The last logged value of a cumulative metric (0 before any step)."""
    return float(steps[-1][key]) if steps else 0.0


def rollout_drain(c: SpotCluster, work: Path) -> Outcome:
    _, victim = c.spot_nodes(2)
    cfg = _config(work, "trainer.max_steps=7")
    out = Outcome("rollout_drain", "rollout node drained (1 s deadline) mid-step; gone and a node joins 2 steps later")
    drained: dict[str, Any] = {}

    def drain(trainer: Trainer) -> None:
        drained["node"] = c.nodes[victim].node_id
        drained["workers"] = {w for w, n in trainer.pool.worker_nodes().items() if n == drained["node"]}
        c.drain(victim, 1.0)
        # The pool's next look at the GCS sees the notice while this step's requests run (its
        # 1 s cache could otherwise outlast a fast request, and then nothing is left to re-send).
        trainer.pool.cluster(fresh=True)

    def gone_then_join(trainer: Trainer) -> None:
        c.remove(victim)
        c.add(c.new_spot_name(), SPOT)

    refill: dict[str, float] = {}
    trainer, injector, error = _train(cfg, {2: drain, 4: gone_then_join,
                                           5: lambda t: refill.update(seconds=_wait_for_workers(t, 2))})
    _fill(out, injector, cfg)
    steps = _steps(Path(cfg.output_dir))
    out.steps_completed, out.error = len(steps), repr(error) if error else ""
    out.work_lost_s = _last(steps, "rollout/lost_work_s")
    after = injector.nodes_by_step[out.hit_step:]  # the steps after the one the drain hit
    out.facts = {"num_workers": [m["rollout/num_workers"] for m in steps],
                 "draining_nodes_seen": [m["rollout/draining_nodes_seen"] for m in steps],
                 "refill_wait_s": refill.get("seconds"),
                 "resent_groups": _last(steps, "rollout/resent_groups"),
                 "preempted_workers": _last(steps, "rollout/preempted_workers"),
                 "requests_on_drained_node_after": sum(n == drained["node"] for ns in after for n in ns),
                 "drained_workers": sorted(drained["workers"])}
    return out


def auto(c: SpotCluster, work: Path) -> Outcome:
    c.spot_nodes(2)
    extra = c.new_spot_name()
    cfg = _config(work, "trainer.max_steps=8", "rollout.num_workers=auto")
    out = Outcome("auto", "num_workers=auto: a node joins, one leaves, then memrl scale asks for 1")

    def scale_to_one(trainer: Trainer) -> None:
        actor = ray.get_actor(control_name(cfg.output_dir), namespace=NAMESPACE)
        ray.get(actor.set_num_workers.remote("1"), timeout=30)

    trainer, injector, error = _train(cfg, {2: lambda t: c.add(extra, SPOT),
                                           3: lambda t: _wait_for_workers(t, 3),
                                           5: lambda t: c.remove(extra), 7: scale_to_one})
    _fill(out, injector, cfg)
    steps = _steps(Path(cfg.output_dir))
    out.steps_completed, out.error = len(steps), repr(error) if error else ""
    out.work_lost_s = _last(steps, "rollout/lost_work_s")
    out.facts = {"num_workers": [m["rollout/num_workers"] for m in steps],
                 "num_workers_requested": [m["rollout/num_workers_requested"] for m in steps]}
    return out


def _since_checkpoint(run: Path, at: float) -> float:
    """Seconds between the newest complete checkpoint under the local folder ``run`` and
    ``at`` (work a resume redoes)."""
    latest = CheckpointManager(str(run)).latest()
    return max(0.0, at - Path(latest, CHECKPOINT_MANIFEST_FILE).stat().st_mtime) if latest else 0.0


# Where each memory scenario's last snapshot is, and how its fault reads: the run directory,
# which every node here sees; checkpoints on the remote store; moved away, as if written on
# the lost node's own disk.
MEMORY_SNAPSHOTS = {"memory_lost": ("shared", ""),
                    "memory_uri": ("uri", "; checkpoints on a remote filesystem (ftp://)"),
                    "memory_unreachable": ("unreachable", "; its snapshot moved away first")}


def memory_lost(c: SpotCluster, work: Path, name: str, store: RemoteStore | None = None) -> Outcome:
    """The memory's node goes mid-step; its snapshot is where ``MEMORY_SNAPSHOTS[name]`` says."""
    snapshot, fault_detail = MEMORY_SNAPSHOTS[name]
    c.spot_nodes(2)
    extra = []
    checkpoints = work / "run"  # the local folder that holds checkpoints/
    if snapshot == "uri":
        assert store is not None
        checkpoints = store.root / name / "run"
        extra = [f"trainer.checkpoint_uri=ftp:///{name}/run"]
    cfg = _config(work, "trainer.max_steps=6", *extra)
    out = Outcome(name, "memory's node removed mid-step, a new one joins" + fault_detail)
    seen: dict[str, Any] = {}

    def fault(trainer: Trainer) -> None:
        seen["t"] = time.time()
        out.work_lost_s = _since_checkpoint(checkpoints, seen["t"])
        if snapshot == "unreachable":
            latest = CheckpointManager(str(checkpoints)).latest()
            shutil.move(f"{latest}/{CHECKPOINT_MEMORY_DIR}", work / "moved-memory")
        seen["first_node"] = c.nodes["mem-a"].node_id
        c.remove("mem-a")
        c.add("mem-b", MEMORY)

    def after_restart(trainer: Trainer) -> None:
        seen["loaded"] = trainer.memory.wait_ready()
        seen["node"] = trainer.memory.node_id()

    trainer, injector, error = _train(cfg, {4: fault, 6: after_restart})
    _fill(out, injector, cfg)
    steps = _steps(Path(cfg.output_dir))
    # What the user reads: memrl's own message for the error (its first line names the fault).
    out.steps_completed, out.error = len(steps), (explain(error)[0][:600] if error else "")
    out.exit_code = None if error is None else 1
    out.facts = {"memory_restarted": [m.get("memory/restarted") for m in steps],
                 "memory_steps_done": [m.get("memory/steps_done") for m in steps],
                 "health_memory_restarts": _last(steps, "health/memory_restarts"),
                 "loaded_snapshot": seen.get("loaded"),
                 "moved_node": seen.get("node") not in (None, seen.get("first_node"))}
    return out


def learner_lost(c: SpotCluster, work: Path, *, drained: bool = False) -> Outcome:
    name = "learner_drain" if drained else "learner_lost"
    c.spot_nodes(2)
    cfg = _config(work, "trainer.max_steps=6")
    out = Outcome(name, "learner's node drained (60 s deadline)" if drained else
                  "learner's node removed mid-step; resume on a new node")
    first_node = c.nodes["learner-a"].node_id

    def fault(trainer: Trainer) -> None:
        if drained:
            c.drain("learner-a", 60.0)
        else:
            c.remove("learner-a")

    trainer, injector, error = _train(cfg, {3: fault})
    out.work_lost_s = _since_checkpoint(Path(cfg.output_dir), injector.stopped_at) if error else 0.0
    _fill(out, injector, cfg)
    out.error = repr(error)[:600] if error else ""
    out.exit_code = getattr(error, "code", None) if isinstance(error, SystemExit) else (1 if error else 0)
    run = Path(cfg.output_dir)
    stopped_at = len(_steps(run))
    checkpoint_step = CheckpointManager(str(run)).verify(CheckpointManager(str(run)).latest())["step"]
    if drained:
        c.remove("learner-a")
    c.add("learner-b", LEARNER)
    resumed, injector2, error2 = _train(cfg, {}, resume="auto")
    _fill(out, injector2, cfg)
    steps = _steps(run)
    out.steps_completed = len(steps)
    out.facts = {"stopped_after_step": stopped_at, "checkpoint_step": checkpoint_step,
                 "resumed_error": repr(error2) if error2 else "",
                 "first_learner_node": first_node[:12],
                 "resumed_learner_node": (injector2.learner_nodes or [""])[0][:12],
                 "logged_steps": [m["step"] for m in steps]}
    return out


def run_scenarios(names: list[str], work: Path) -> list[Outcome]:
    """Start the cluster, run each scenario on it (runs under ``work/NAME``), tear it down."""
    store = RemoteStore(work / "store") if "memory_uri" in names else None  # before any node
    c = SpotCluster()
    outcomes = []
    try:
        c.add("learner-a", LEARNER), c.add("mem-a", MEMORY)
        for name in names:
            folder = work / name
            folder.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            try:
                outcome = _run_one(name, c, folder, store)
            except Exception:  # noqa: BLE001 - report it and go on with the next scenario
                outcome = Outcome(name, "scenario crashed", error=traceback.format_exc()[-1500:])
            outcome.facts["seconds"] = round(time.monotonic() - started, 1)
            outcomes.append(outcome)
            print(f"[{name}] {json.dumps(asdict(outcome))}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        c.cluster.shutdown()
        if store is not None:
            store.close()
    return outcomes


def _run_one(name: str, c: SpotCluster, folder: Path, store: RemoteStore | None) -> Outcome:
    if name == "rollout_lost":
        return rollout_lost(c, folder)
    if name == "rollout_drain":
        return rollout_drain(c, folder)
    if name == "auto":
        return auto(c, folder)
    if name in MEMORY_SNAPSHOTS:
        if "mem-a" not in c.nodes:  # the previous scenario moved the memory to mem-b
            c.nodes["mem-a"] = c.nodes.pop("mem-b")
        return memory_lost(c, folder, name, store)
    if "learner-a" not in c.nodes:
        c.nodes["learner-a"] = c.nodes.pop("learner-b")
    return learner_lost(c, folder, drained=name == "learner_drain")


def table(outcomes: list[Outcome]) -> str:
    """The summary table: one row per fault; the prompt counts are the audit's."""
    rows = []
    for o in outcomes:
        ended = "ok" if not o.error else ("exit 143, resumed" if o.exit_code == PREEMPTED_EXIT_CODE
                                          else "error, resumed" if o.scenario == "learner_lost"
                                          else "error (expected)" if o.scenario == "memory_unreachable"
                                          else "FAILED")
        counts = o.audit.get("counts", {})
        audited = str(o.audit.get("scheduled", "—"))
        rows.append((o.scenario, str(o.hit_step), f"{o.steps_completed}/{o.max_steps}", audited,
                     *(str(counts.get(kind, "—")) for kind in KINDS), f"{o.work_lost_s:.1f}", ended))
    return markdown_table(("scenario", "fault hit step", "steps done", "prompts audited",
                           *(TITLES[kind] for kind in KINDS), "work lost s", "ended"), rows, padded=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--json", default=None, help="write every outcome here")
    parser.add_argument("--work-dir", default=None, help="run directories (default: a temp dir)")
    ns = parser.parse_args(argv)
    names = [n for n in ns.scenarios.split(",") if n]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    # A private temp dir: the cluster's address file must not reach other Ray users of this
    # machine. Authentication off: everything listens on this machine only.
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="memrl-spot-"))
    os.environ["RAY_AUTH_MODE"] = "disabled"
    work = Path(ns.work_dir or tempfile.mkdtemp(prefix="memrl-spot-runs-"))
    (work / "cache").mkdir(parents=True, exist_ok=True)
    outcomes = run_scenarios(names, work)
    print(table(outcomes))
    if ns.json:
        Path(ns.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
