"""The driver loop of ``memrl train``, top to bottom.

Set-up: task, rewards, model folder, Ray, the memory service, the learner group and the
rollout pool; then, when resuming, the checkpoint's learner state, memory snapshot, prompt
position and weight version. Then per step:

1. sample prompts from the resumable stream and send them, as prompt groups, to the
   least-loaded rollout workers (weights travel as a ``(version, ObjectRef)``);
2. score the completions (rule rewards, then the memory service) in a Ray task **while** the
   learners compute reference and old log-probs of the same batches — both read the rollout
   batches from the object store, the driver never does;
3. group-relative advantages from the rewards (a few floats per completion);
4. one optimizer step on the learners; rank 0 publishes the new weights once;
5. log every metric; checkpoint on cadence (steps, minutes, or a preemption notice: SIGTERM
   to the driver, or the node of the driver, a learner or the memory service draining).

Between steps the pool follows the cluster (``rollout.num_workers`` is a target, a number or
``auto``; ``control.yaml`` and ``memrl scale`` change it while the job runs).

The driver holds metadata only: records, object refs, rewards and metrics. With
``rollout.mode: async`` the next step's generation starts before this step trains (one step
off-policy, importance-corrected by the learner).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import yaml
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from memrl.actors.cluster import StartupReporter, init_ray, node_totals
from memrl.actors.control import start_control
from memrl.actors.memory import SnapshotUnreachable
from memrl.actors.rollout_pool import PendingGeneration, RolloutPool
from memrl.actors.scoring import score_step_task
from memrl.checkpoint import CheckpointManager
from memrl.cluster.capacity import WorkerCount, critical_drains, parse_worker_count
from memrl.cluster.placement import check_fits, learner_demands, memory_demands, rollout_demand
from memrl.cluster.requests import (
    GenerationRequest,
    chunk_requests,
    request_seed,
    training_sampling,
)
from memrl.config import Config, config_to_yaml
from memrl.errors import InputError, RuntimeFault, error_log, phase
from memrl.grpo.advantages import group_advantages, keep_mask_for_groups, zero_variance_groups
from memrl.prompts import record_prompt
from memrl.rewards.registry import RewardComposer
from memrl.rewards.step_scores import StepScores
from memrl.rollout.engine import load_tokenizer
from memrl.run_lock import RunLock
from memrl.tasks import build_task
from memrl.train.data_stream import PromptStream, StreamState
from memrl.train.evaluate import greedy_sampling, score_greedy
from memrl.train.metrics import MetricsWriter
from memrl.train.setup import (
    build_reward_plan,
    learner_settings,
    memory_settings,
    prepare_model,
    rollout_worker_factory,
)
from memrl.types import Record

log = logging.getLogger(__name__)

CONTROL_FILE = "control.yaml"  # OUTPUT_DIR/control.yaml: {rollout: {num_workers: N}}
CONTROL_TIMEOUT_S = 30.0  # for the driver's own control actor (memrl scale requests)
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: the job system sees a failure and restarts it
PREEMPTION_WATCHDOG = "memrl-preemption-watchdog"  # the thread that exits past the deadline
MEMORY_RETRIES = 3


def read_control(text: str) -> tuple[WorkerCount | None, str | None]:
    """``(num_workers, None)`` from a control file's text, or ``(None, reason)`` when invalid."""
    expected = "expected 'rollout: {num_workers: N}' with a whole number N >= 1 or auto"
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"not valid YAML ({str(exc).splitlines()[0]}); {expected}"
    value = tree.get("rollout", {}).get("num_workers") if isinstance(tree, dict) and \
        isinstance(tree.get("rollout"), dict) else None
    if value is None:
        return None, f"no rollout.num_workers; {expected}"
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        return None, f"rollout.num_workers = {value} is below 1 (a run needs a worker); {expected}"
    try:
        return parse_worker_count(value), None
    except ValueError:
        return None, f"rollout.num_workers = {value!r} is not a whole number; {expected}"


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; exits with a non-zero code."""


@dataclass
class StepGeneration:
    """One step's prompts and their generation (running or finished)."""

    step: int
    records: list[Record]
    pending: PendingGeneration


def _stat(prefix: str, values: np.ndarray) -> dict[str, float]:
    return {f"{prefix}/mean": float(np.mean(values)), f"{prefix}/std": float(np.std(values))}


class Trainer:
    """Owns the run's actors and metadata; ``run()`` is the training loop."""

    def __init__(self, cfg: Config, resume: str = "none"):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.memory = self.learners = self.pool = self.control = None
        # The process's SIGTERM handler before run() installed its own; close() puts it back, so
        # a finished trainer never turns a later SIGTERM into its preemption exit.
        self._previous_sigterm: Any = None
        # Set by close(): a preempted run that ended in time must not be killed later by its
        # deadline watchdog (in a long-lived process, e.g. a test session or a notebook).
        self._preemption_over = threading.Event()
        # Before anything is written: one run per output directory.
        self.lock = RunLock(self.run_dir).acquire()
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    def _set_up(self, resume: str) -> None:
        cfg = self.cfg
        self.checkpoints = CheckpointManager(cfg.trainer.checkpoint_uri or cfg.output_dir,
                                             cfg.trainer.keep_last_checkpoints)
        resume_from = self.checkpoints.resolve(resume)
        state = self.checkpoints.verify(resume_from) if resume_from else None

        # Inputs are read and checked before the run directory gets its first file.
        try:
            self.task = build_task(cfg)
            self.plan = build_reward_plan(cfg, self.task)
            self.composer = RewardComposer(self.plan.specs)
        except InputError:
            raise
        except ValueError as exc:  # an unusable task option or reward spec of the config
            raise InputError(str(exc), where=f"config {'rewards' if hasattr(self, 'task') else 'task'} "
                             "section", hint="fix that entry of the config (memrl config show "
                             "prints the resolved one)") from exc
        stream_state = StreamState.from_dict(state["stream"]) if state else None
        self.stream = PromptStream(self.task.dataset("train"), seed=cfg.seed, state=stream_state)
        self.eval_records = list(self.task.dataset("test"))
        self.model_path = prepare_model(cfg, self.task)
        self.tokenizer = load_tokenizer(self.model_path)
        torch.manual_seed(cfg.seed)
        if state:
            torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.metrics_lines = int(state.get("metrics_lines", -1)) if state else 0

        (self.run_dir / "config.yaml").write_text(config_to_yaml(cfg))
        error_log.use_run_dir(self.run_dir)
        self.checkpoints.remove_stale_partials()  # safe: the lock keeps other writers out

        init_ray(cfg)
        check_fits(cfg, node_totals())
        with StartupReporter() as reporter:
            self._start_actors(resume_from, reporter)
        self.weights: tuple[int, ray.ObjectRef] | None = None  # None: the model folder's weights
        self.version = 0
        self.step = 0
        self.resumed_from = resume_from
        self._inflight: list[Record] = []
        self._preempt_at: float | None = None
        self.memory_restarts = 0
        self._last_save = time.monotonic()
        self._control_seen: tuple[float, str] | None = None
        self._scale_seen = 0  # version of the last `memrl scale` request applied
        self._writer: MetricsWriter | None = None
        if state:
            with phase("resume: loading the learner state", timeout_s=cfg.trainer.timeout_s):
                self.learners.load(f"{resume_from}/learner")
            self.step = int(state["step"])
            self.version = int(state["weight_version"])
            self._publish()
            self._inflight = [Record(**r) for r in state.get("inflight_records", [])]
            print(f"resumed from step {self.step} ({resume_from})", flush=True)

    def _start_actors(self, resume_from: str | None, reporter: StartupReporter) -> None:
        from memrl.actors.learner import LearnerGroup

        cfg, timeout_s = self.cfg, self.cfg.trainer.timeout_s
        if cfg.uses_memory:
            from memrl.actors.memory import MemoryClient

            shards = memory_demands(cfg)
            reporter.waiting_for("start-up of the memory service", lambda: shards)
            with phase("start-up of the memory service", timeout_s=timeout_s):
                self.memory = MemoryClient(
                    memory_settings(cfg), num_shards=cfg.memory.num_shards,
                    num_cpus=cfg.memory.num_cpus, num_gpus=cfg.memory.num_gpus,
                    resources=cfg.memory.resources,
                    snapshot_root=str((self.run_dir / "memory").absolute()),
                    initial_snapshot=f"{resume_from}/memory" if resume_from else None,
                    timeout_s=timeout_s,
                )
        ranks = learner_demands(cfg)  # placed together (one placement group)
        reporter.waiting_for("start-up of the learners", lambda: ranks)
        with phase("start-up of the learners", timeout_s=timeout_s):
            self.learners = LearnerGroup(
                learner_settings(cfg, self.model_path), cfg.learner.num_learners,
                num_cpus_per_learner=cfg.learner.num_cpus, num_gpus_per_learner=cfg.learner.num_gpus,
                resources_per_learner=cfg.learner.resources, timeout_s=timeout_s,
            )
        # Named in the cluster so that `memrl scale` finds this run; read at every step.
        self.control = start_control(cfg.output_dir)
        with phase("start-up of the rollout workers", timeout_s=timeout_s):
            self.pool = pool = RolloutPool(
                rollout_worker_factory(cfg, self.model_path), cfg.rollout.num_workers,
                timeout_s=timeout_s, worker_demand=rollout_demand(cfg, "rollout worker").resources,
                others=learner_demands(cfg) + memory_demands(cfg))
            reporter.waiting_for("start-up of the rollout workers",
                                 lambda: [rollout_demand(cfg, w) for w in pool.joining()])
            pool.wait_until_ready()

    # -- prompts and generation ----------------------------------------------------------------
    def render(self, record: Record) -> str:
        """The chat prompt of ``record`` (the same builder as ``memrl eval``)."""
        return record_prompt(self.task, self.tokenizer, record, num_shots=self.cfg.task.num_shots,
                             seed=self.cfg.seed)

    def _launch(self, step: int, records: list[Record] | None = None) -> StepGeneration:
        """Take the step's prompts (or the given ones) and start generating them."""
        if records is None:
            records = self.stream.next_batch(self.cfg.grpo.prompts_per_step)
        requests = chunk_requests([self.render(r) for r in records], [r.id for r in records],
                                  num_chunks=len(self.pool))
        g = self.cfg.grpo
        weights = self.weights

        def submit(actor: Any, req: GenerationRequest):
            settings = training_sampling(g, request_seed(self.cfg.seed, step, req.index))
            return actor.generate.remote(req.prompts, req.record_ids, settings, weights)

        return StepGeneration(step=step, records=records, pending=self.pool.start(requests, submit))

    def _publish(self) -> float:
        weights_ref, summary = self.learners.publish_weights(self.version)
        self.weights = (self.version, weights_ref)
        return float(summary.get("seconds", 0.0))

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        print(f"memrl: evaluating the policy at step {self.step} on {len(self.eval_records)} held-out "
              "problems (greedy)", file=sys.stderr, flush=True)
        with phase("evaluation", step=self.step, timeout_s=self.cfg.trainer.timeout_s):
            max_tokens = self.cfg.grpo.max_completion_length
            batches = self.pool.generate_batches(
                [self.render(r) for r in self.eval_records], [r.id for r in self.eval_records],
                greedy_sampling(max_tokens), self.weights, greedy=True,
                timeout_s=self.cfg.trainer.timeout_s)
            result = score_greedy(batches, self.eval_records, self.plan, max_tokens, self.task)
        return dataclasses.asdict(result)

    # -- one step ------------------------------------------------------------------------------
    def _score(self, records: list[Record], batch_refs: list[ray.ObjectRef]) -> StepScores:
        """The reward task; retried when the memory service died mid-call (it restarts from
        its snapshot and this step's entries are inserted by the retry)."""
        memory_call = self.memory.score_and_insert if self.memory is not None else None
        by_id = {r.id: r for r in records}
        # On the driver's node: a spot node taking the task with it would fail the step.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        for attempt in range(1, MEMORY_RETRIES + 1):
            ref = score_step_task.options(scheduling_strategy=here).remote(
                self.plan, self.composer, self.cfg.grpo.max_completion_length, by_id, memory_call,
                self.step, *batch_refs)
            try:
                with phase(f"scoring (rewards {', '.join(s.label for s in self.plan.specs)}"
                           + (" and the memory service)" if self.memory is not None else ")"),
                           step=self.step + 1, actor="the reward task (score_step_task)",
                           timeout_s=self.cfg.trainer.timeout_s):
                    return ray.get(ref, timeout=self.cfg.trainer.timeout_s)
            except ray.exceptions.RayTaskError as exc:
                # The task itself is fine; its call into a dying/restarting memory actor is not.
                memory_died = isinstance(exc.cause, RayActorError)
                if not memory_died or attempt == MEMORY_RETRIES:
                    raise
                self.memory_restarts += 1
                log.warning("memory service failed while scoring step %d (%s); retrying",
                            self.step, type(exc).__name__)
                self._wait_for_memory()
        raise AssertionError("unreachable")

    def _wait_for_memory(self) -> None:
        """Block until the restarted memory service answers (calls fail fast while it restarts);
        a restart that cannot read its snapshot ends the run with the memory's own message."""
        deadline = time.monotonic() + self.cfg.trainer.timeout_s
        while True:
            try:
                self.memory.wait_ready()
                return
            except RayActorError as exc:
                if SnapshotUnreachable.__name__ in str(exc):  # its __init__ refused to start empty
                    reason = str(exc).split(f"{SnapshotUnreachable.__name__}: ", 1)[-1].strip()
                    raise RuntimeFault(f"the memory service cannot restart: {reason}",
                                       where=f"step {self.step + 1}",
                                       hint="resume with --resume auto once the snapshot is "
                                       "reachable from every node") from exc
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def run_step(self, batch: StepGeneration,
                 next_batch: Callable[[], StepGeneration | None]) -> tuple[dict[str, float], StepGeneration | None]:
        """Finish ``batch``'s generation, score it, take one optimizer step, publish weights.

        In async mode ``next_batch()`` is called as soon as this step's generation is done, so
        the next step generates while this one scores and trains. Returns the step's metrics
        and that next batch (None in sync mode)."""
        cfg, g = self.cfg, self.cfg.grpo
        t0 = time.perf_counter()
        step, timeout_s = batch.step + 1, cfg.trainer.timeout_s
        with phase("generation", step=step, actor="the rollout workers", timeout_s=timeout_s):
            results = self.pool.finish(batch.pending)
        t_gen = time.perf_counter()
        upcoming = next_batch() if cfg.rollout.mode == "async" else None
        batch_refs = [r.batch_ref for r in results]

        # Scoring and the learners' reference/old log-probs run at the same time.
        with phase("reference log-probs", step=step, actor="the learners", timeout_s=timeout_s):
            prep = self.learners.begin_step(batch_refs)
        scores = self._score(batch.records, batch_refs)
        t_score = time.perf_counter()

        rewards = torch.tensor(scores.total, dtype=torch.float32)
        advantages = group_advantages(rewards, g.num_generations, scale=g.scale_rewards)
        keep_groups = ~zero_variance_groups(rewards, g.num_generations)
        keep = keep_mask_for_groups(keep_groups, g.num_generations) if g.filter_zero_variance else None
        if keep is not None and not bool(keep.any()):
            keep = None  # every group is flat: all advantages are 0, the step only moves KL
        with phase("optimizer step", step=step, actor="the learners", timeout_s=timeout_s):
            train_stats = self.learners.finish_step(prep, advantages, keep=keep)
        t_train = time.perf_counter()

        self.version += 1
        with phase("weight publish", step=step, actor="learner rank 0", timeout_s=timeout_s):
            publish_seconds = self._publish()
        t_sync = time.perf_counter()

        tokens = int(sum(r.info["tokens"] for r in results))
        staleness = self.version - 1 - min(r.info["weight_version"] for r in results)
        if staleness > cfg.rollout.max_staleness:
            raise RuntimeError(f"step {batch.step} trained on weights {staleness} versions old, "
                               f"over rollout.max_staleness = {cfg.rollout.max_staleness}")
        metrics: dict[str, float] = {}
        metrics.update(_stat("reward/total", scores.total))
        for name, values in scores.components.items():
            metrics.update(_stat(f"reward/{name}", values))
        metrics["accuracy"] = float(scores.correct.mean())
        metrics.update(_stat("completion/length", scores.lengths.astype(float)))
        metrics["completion/clipped_frac"] = float((scores.lengths >= g.max_completion_length).mean())
        metrics["grpo/zero_variance_groups_frac"] = float(1.0 - keep_groups.float().mean())
        metrics.update({f"train/{k}": v for k, v in train_stats.items()})
        metrics["time/generate"] = t_gen - t0
        metrics["time/score"] = t_score - t_gen
        metrics["time/memory"] = scores.memory_seconds
        metrics["time/reference"] = float(train_stats.get("reference_seconds", 0.0))
        metrics["time/train"] = t_train - t_score
        metrics["time/sync"] = t_sync - t_train + max(r.info.get("sync_seconds", 0.0) for r in results)
        metrics["time/step"] = t_sync - t0
        metrics["throughput/tokens_per_s"] = tokens / max(t_sync - t0, 1e-9)
        # Real (unpadded) prompt + completion tokens over the learners' own compute time.
        metrics["throughput/train_tokens_per_s"] = train_stats.get("sequence_tokens", 0.0) / max(
            metrics["time/reference"] + train_stats.get("step_time_s", 0.0), 1e-9)
        metrics["throughput/generate_tokens_per_s"] = tokens / max(
            sum(r.info["generate_seconds"] for r in results) / len(results), 1e-9) * len(results)
        metrics["data/consumed_prompts"] = self.stream.state.consumed
        # Identifies the step's prompts (resume tests and audits compare it across runs).
        metrics["data/prompts_sha1"] = hashlib.sha1(
            ",".join(r.id for r in batch.records).encode()).hexdigest()[:16]
        metrics["weights/version"] = self.version
        metrics["weights/publish_seconds"] = publish_seconds
        metrics["weights/staleness"] = float(staleness)
        metrics["rollout/num_workers"] = self.pool.num_running()  # placed and answering
        metrics["rollout/num_workers_requested"] = len(self.pool)  # config or control.yaml
        metrics["rollout/failures"] = self.pool.events.failures
        metrics["rollout/redispatched"] = self.pool.events.redispatched
        metrics["rollout/draining_nodes"] = len(self.pool.cluster().draining)  # now
        metrics["rollout/draining_nodes_seen"] = self.pool.events.draining_nodes_seen
        metrics["rollout/preempted_workers"] = self.pool.events.preempted_workers
        metrics["rollout/resent_groups"] = self.pool.events.resent_groups
        metrics["rollout/lost_work_s"] = round(self.pool.events.lost_work_s, 3)
        metrics["health/memory_restarts"] = self.memory_restarts
        if self.memory is not None:
            metrics.update({f"memory/{k}": v for k, v in self.memory.metrics().items()})
        return metrics, upcoming

    # -- checkpoints, control, preemption ------------------------------------------------------
    def save_checkpoint(self, upcoming: StepGeneration | None = None) -> str:
        """Write ``checkpoints/step_N`` atomically; ``latest`` names it once complete."""
        with phase("checkpoint", step=self.step, timeout_s=self.cfg.trainer.timeout_s):
            return self._save_checkpoint(upcoming)

    def _save_checkpoint(self, upcoming: StepGeneration | None) -> str:
        started = time.perf_counter()
        partial = self.checkpoints.begin(self.step)
        learner_files = self.learners.save(f"{partial}/learner", export_hf=True)
        files = {f"learner/{name}": entry for name, entry in learner_files.items()}
        if self.memory is not None:
            self.memory.snapshot(f"{partial}/memory")
        state = {
            "step": self.step,
            "weight_version": self.version,
            "stream": self.stream.state.to_dict(),
            "torch_rng": torch.get_rng_state().tolist(),
            # async mode: prompts already taken from the stream for the next step
            "inflight_records": [dataclasses.asdict(r) for r in upcoming.records] if upcoming else [],
            "config": self.cfg.model_dump(mode="json"),
            # metrics.jsonl lines up to here: a resume drops the lines logged after them
            "metrics_lines": self._writer.lines if self._writer is not None else 0,
        }
        uri = self.checkpoints.complete(partial, self.step, state, files=files)
        if self.memory is not None:  # the snapshot moved with the rename of the partial dir
            self.memory.remember_snapshot(f"{uri}/memory")
        self._last_save = time.monotonic()
        log.info("checkpoint step %d written in %.1f s: %s", self.step, time.perf_counter() - started, uri)
        return uri

    def _checkpoint_due(self) -> bool:
        t = self.cfg.trainer
        by_steps = t.save_every_steps > 0 and self.step % t.save_every_steps == 0
        by_time = t.save_every_minutes > 0 and time.monotonic() - self._last_save >= 60 * t.save_every_minutes
        return by_steps or by_time

    def _apply_control(self) -> None:
        """Before each step: take a new ``rollout.num_workers`` from ``OUTPUT_DIR/control.yaml``
        or ``memrl scale`` (whichever changed last), then bring the pool to its target for the
        cluster as it is now. An invalid file is reported (once per change) with the reason, and
        ignored."""
        asked = self._asked_by_file()
        # Its own short limit, not trainer.timeout_s: the control actor answers at once, and a
        # phase's limit must time out the phase it names.
        version, scaled = ray.get(self.control.requested.remote(), timeout=CONTROL_TIMEOUT_S)
        if version != self._scale_seen:
            self._scale_seen, asked = version, (scaled, "memrl scale")
        if asked is not None and asked[0] != self.pool.requested:
            log.info("rollout.num_workers: %s -> %s (from %s)", self.pool.requested, asked[0], asked[1])
            self.pool.set_target(asked[0])
        before = self.pool.num_running()
        self.pool.refresh()
        if asked is not None and before < len(self.pool):
            log.warning("rollout workers: %d asked for (%s), %d running; the others wait for the "
                        "cluster to place them (%s)", len(self.pool), asked[1], before,
                        f"{self.cfg.rollout.num_cpus_per_worker:g} CPU, "
                        f"{self.cfg.rollout.num_gpus_per_worker:g} GPU each")

    def _asked_by_file(self) -> tuple[WorkerCount, str] | None:
        """A changed, valid ``control.yaml``'s count (None: none, unchanged or invalid)."""
        path = self.run_dir / CONTROL_FILE
        try:
            seen = (path.stat().st_mtime, path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return None
        changed = seen != self._control_seen
        self._control_seen = seen
        wanted, problem = read_control(seen[1])
        if problem is not None:
            if changed:
                log.warning("ignoring %s: %s", path, problem)
            return None
        return (wanted, str(path)) if changed else None

    def _report_status(self) -> None:
        """Tell the control actor where the run is (``memrl scale`` prints it)."""
        self.control.report.remote({"step": self.step, "running": self.pool.num_running(),
                                    "target": len(self.pool)})

    def _critical_roles(self) -> dict[str, str | None]:
        """The node of each actor whose loss stops the run: the driver, each learner rank and
        the memory service (it moves when restarted, so it is asked each time)."""
        roles: dict[str, str | None] = {"the driver": ray.get_runtime_context().get_node_id()}
        roles.update({f"learner rank {r}": n for r, n in enumerate(self.learners.node_ids)})
        if self.memory is not None:
            try:
                roles["the memory service"] = self.memory.node_id()
            except RayActorError:  # restarting: its new node is not draining
                pass
        return roles

    def _watch_critical_drains(self) -> None:
        """After each step: a draining node under the driver, a learner or the memory service
        means checkpoint now and exit for a restart, as on SIGTERM, within the node's deadline."""
        state = self.pool.cluster(fresh=True)
        if self._preempt_at is not None or not state.draining:
            return
        hits = critical_drains(self._critical_roles(), state)
        if hits:
            role, node, deadline = hits[0]
            left = deadline - time.time()
            self._begin_preemption(f"the node of {role} ({node[:12]}) is draining, "
                                   f"{left:.0f} s before its deadline", left)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._begin_preemption("SIGTERM", self.cfg.trainer.preemption_deadline_s)

    def _begin_preemption(self, why: str, deadline_s: float) -> None:
        """Finish the step in flight, checkpoint and exit with ``PREEMPTED_EXIT_CODE``; past
        ``deadline_s`` (at most ``trainer.preemption_deadline_s``) exit anyway, unless
        :meth:`close` has run by then."""
        if self._preempt_at is not None:
            return
        self._preempt_at = time.monotonic()
        deadline = max(0.0, min(deadline_s, self.cfg.trainer.preemption_deadline_s))
        log.warning("%s: finishing step %d, then checkpointing (deadline %.0f s); restart the "
                    "job with --resume auto", why, self.step + 1, deadline)

        def watchdog() -> None:
            # Past the deadline the node may vanish at any moment: leave now; `latest` still
            # names the last complete checkpoint.
            if self._preemption_over.wait(deadline):
                return
            print(f"preemption deadline of {deadline:.0f} s passed before the checkpoint "
                  "completed; exiting", file=sys.stderr, flush=True)
            os._exit(PREEMPTED_EXIT_CODE)

        threading.Thread(target=watchdog, name=PREEMPTION_WATCHDOG, daemon=True).start()

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        summary: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "model": cfg.model.name_or_path,
                                   "resumed_from_step": self.step if self.resumed_from else None}
        previous = self._partial_summary = self.run_dir / "summary_partial.json"
        if self.resumed_from and previous.is_file():
            summary.update({k: v for k, v in json.loads(previous.read_text()).items()
                            if k in ("accuracy_before", "accuracy_lenient_before", "best_accuracy",
                                     "best_step")})
        writer = self._writer = MetricsWriter(
            self.run_dir, tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project, run_name=self.run_dir.name,
            config=cfg.model_dump(mode="json"),
            keep_lines=self.metrics_lines if self.resumed_from else 0,
            resume_step=self.step if self.resumed_from else None)
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        if cfg.trainer.eval_before_after and "accuracy_before" not in summary:
            before = self.evaluate()
            summary["accuracy_before"] = before["accuracy"]
            summary["accuracy_lenient_before"] = before["accuracy_lenient"]
            summary["best_accuracy"], summary["best_step"] = before["accuracy"], 0
            previous.write_text(json.dumps(summary))
            writer.log(self.step, {f"eval/{k}": v for k, v in before.items()})
        bar = _progress(cfg, self.step)
        try:
            batch: StepGeneration | None = None
            if self.step < cfg.trainer.max_steps:
                self._apply_control()
                batch = self._launch(self.step, self._inflight or None)
            while batch is not None:
                following = batch.step + 1
                last = following >= cfg.trainer.max_steps
                metrics, upcoming = self.run_step(
                    batch, lambda following=following, last=last: None if last else self._launch(following))
                self.step += 1
                writer.log(self.step, metrics)
                self._report_status()
                _show(bar, metrics)
                self._watch_critical_drains()
                if self._preempt_at is not None:
                    self.save_checkpoint(upcoming)
                    raise Preempted(PREEMPTED_EXIT_CODE)
                if cfg.trainer.eval_every_steps and self.step % cfg.trainer.eval_every_steps == 0 \
                        and not last:
                    self._periodic_eval(writer, summary)
                if self._checkpoint_due() or last:
                    self.save_checkpoint(upcoming)
                if not last:  # the pool follows the cluster and the requests before the launch
                    self._apply_control()
                batch = None if last else (upcoming or self._launch(self.step))
            if bar is not None:
                bar.close()
                bar = None
            if cfg.trainer.eval_before_after or cfg.trainer.eval_every_steps:
                summary["accuracy_after"] = self._periodic_eval(writer, summary)
        finally:
            if bar is not None:
                bar.close()
            writer.close()
        with phase("final export (model, memory)", step=self.step, timeout_s=cfg.trainer.timeout_s):
            self.learners.export_hf(self.run_dir / "model")
            if self.memory is not None:
                self.memory.snapshot(str((self.run_dir / "memory" / "final").absolute()))
        summary.update({"steps": self.step, "wall_seconds": time.time() - started,
                        "model_dir": str(self.run_dir / "model")})
        if "best_step" in summary:  # step 0 is the starting model itself
            summary["best_model_dir"] = str(self.run_dir / "best_model") if summary["best_step"] \
                else self.model_path
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _periodic_eval(self, writer: MetricsWriter, summary: dict[str, Any]) -> float:
        """Evaluate now; keep the best model so far in ``OUTPUT_DIR/best_model``."""
        result = self.evaluate()
        writer.log(self.step, {f"eval/{k}": v for k, v in result.items()})
        best = summary.get("best_accuracy")
        if best is None or result["accuracy"] > best:
            summary["best_accuracy"] = result["accuracy"]
            summary["best_step"] = self.step
            self.learners.export_hf(self.run_dir / "best_model")
        summary["accuracy_lenient_after"] = result["accuracy_lenient"]  # of the latest evaluation
        self._partial_summary.write_text(json.dumps(summary))  # survives a resume
        return result["accuracy"]

    def close(self) -> None:
        """Stop the run's actors (the Ray cluster itself is left running) and release the run
        directory; safe after a failed start-up and when called twice."""
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        try:
            if self.pool is not None:
                self.pool.resize(0, allow_empty=True)
            if self.learners is not None:
                self.learners.shutdown()
            if self.memory is not None:
                self.memory.shutdown()
            if self.control is not None:
                ray.kill(self.control, no_restart=True)
        finally:
            self.pool = self.learners = self.memory = self.control = None
            self.lock.release()
            self._preemption_over.set()


def _progress(cfg: Config, initial: int):
    if not cfg.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.trainer.max_steps, initial=initial, desc="train", unit="step",
                dynamic_ncols=True)


def _show(bar: Any, metrics: dict[str, float]) -> None:
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(reward=f"{metrics['reward/total/mean']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                    tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")


def run_training(cfg: Config, resume: str = "none") -> dict[str, Any]:
    """Train with ``cfg``; returns the run summary (also written to ``summary.json``).

    ``resume``: ``none`` (fresh), ``auto`` (the latest complete checkpoint if any) or a
    checkpoint directory/URI.
    """
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.run()
    finally:
        trainer.close()
