"""The driver loop of ``memrl train``, top to bottom.

Set-up: task, rewards, model folder, Ray, the memory service, the learner group and the
rollout pool; then, when resuming, the checkpoint's learner state, memory snapshot, prompt
position and weight version. Then per step (:meth:`Trainer.run_step`):

1. finish the step's generation: prompt groups sent to the least-loaded rollout workers
   (weights travel as a ``(version, ObjectRef)``);
2. score the completions (rule rewards, then the memory service) in a Ray task **while** the
   learners compute the reference log-probs of the same batches — both read the rollout
   batches from the object store, the driver never does;
3. group-relative advantages from the rewards (a few floats per completion);
4. one optimizer step on the learners; rank 0 publishes the new weights once;
5. record what the learners trained on in the prompt ledger (:mod:`memrl.ledger`), then log the
   step's metrics (:mod:`memrl.train.step_metrics`); checkpoint on cadence (steps, minutes, or
   a preemption notice, see :mod:`memrl.train.run_control`).

Between steps the pool follows the cluster (``rollout.num_workers`` is a target, a number or
``auto``; ``control.yaml`` and ``memrl scale`` change it while the job runs).

The driver holds metadata only: records, object refs, rewards and metrics. With
``rollout.mode: async`` the next step's generation starts before this step trains (one step
off-policy, importance-corrected by the learner).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray.exceptions import RayActorError

from memrl.actors.cluster import check_cluster_token, init_ray, node_totals
from memrl.actors.control import start_control
from memrl.actors.rollout_pool import PendingGeneration, RolloutPool
from memrl.actors.startup import StartupPhase, wait_for_phases
from memrl.checkpoint import CheckpointManager
from memrl.cluster.placement import check_fits, learner_demands, memory_demands, rollout_demand
from memrl.cluster.requests import GenerationRequest, chunk_requests, request_seed, training_sampling
from memrl.config import Config, config_to_yaml
from memrl.errors import InputError, error_log, phase
from memrl.grpo.advantages import step_advantages
from memrl.ledger import LedgerWriter, PromptId, ledger_line
from memrl.prompts import record_prompt
from memrl.rewards.registry import RewardComposer
from memrl.rollout.engine import load_tokenizer
from memrl.run_dir import CHECKPOINT_LEARNER_DIR, CHECKPOINT_MEMORY_DIR, RunDir
from memrl.run_lock import RunLock
from memrl.tasks import build_task
from memrl.terminal import libraries_to_file, terminal
from memrl.train.data_stream import TRAIN_SPLIT, PromptStream, StreamState
from memrl.train.drift_alarm import DriftAlarm
from memrl.train.evaluate import greedy_sampling, score_greedy
from memrl.train.metrics import MetricsWriter
from memrl.train.run_control import PREEMPTED_EXIT_CODE, Preempted, RunController
from memrl.train.run_summary import RunSummary
from memrl.train.setup import (
    build_reward_plan,
    learner_settings,
    memory_settings,
    prepare_model,
    rollout_worker_factory,
)
from memrl.train.step_clock import StepClock
from memrl.train.step_metrics import StepWork, run_state_metrics, step_metrics, weight_staleness
from memrl.train.step_scoring import StepScorer
from memrl.types import Record

if TYPE_CHECKING:  # imported at start-up: DeepSpeed and the memory's libraries load slowly
    from memrl.actors.learner import LearnerGroup
    from memrl.actors.memory import MemoryClient

log = logging.getLogger(__name__)


@dataclass
class StepGeneration:
    """One step's prompts, their dataset ids and their generation (running or finished)."""

    step: int
    records: list[Record]
    prompts: list[PromptId]
    pending: PendingGeneration


class Trainer:
    """Owns the run's actors and metadata; ``run()`` is the training loop."""

    # Set by start-up, in this order; close() stops those that exist (start-up can fail midway).
    controller: RunController
    memory: MemoryClient | None  # None: the method uses no memory
    learners: LearnerGroup
    pool: RolloutPool

    def __init__(self, cfg: Config, resume: str = "none", *, quiet: bool = False):
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.files = RunDir(self.run_dir)
        # Before anything is written: one run per output directory.
        self.lock = RunLock(self.run_dir).acquire()
        # quiet: the libraries' and actors' output goes to OUTPUT_DIR/logs/, memrl's lines to
        # the terminal (memrl train's default; in-process callers keep everything where it was).
        self._quiet = ExitStack()
        self.log_dir = self.files.logs if quiet else None
        try:
            self._set_up(resume)
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------------------
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
        check_cluster_token(cfg)  # seconds, not after minutes of building the model
        stream_state = StreamState.from_dict(state["stream"]) if state else None
        self.stream = PromptStream(self.task.dataset(TRAIN_SPLIT), seed=cfg.seed, state=stream_state)
        self.eval_records = list(self.task.dataset("test"))
        self.model_path = prepare_model(cfg, self.task)
        self.tokenizer = load_tokenizer(self.model_path)
        torch.manual_seed(cfg.seed)
        if state:
            torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
        self.metrics_lines = int(state.get("metrics_lines", -1)) if state else 0
        self.ledger_lines = int(state.get("ledger_lines", -1)) if state else 0

        self.files.config.write_text(config_to_yaml(cfg))
        error_log.use_run_dir(self.run_dir)
        if self.log_dir is not None:
            self._quiet.enter_context(libraries_to_file(self.files.driver_log))
            terminal.say(f"memrl: the libraries' and actors' output goes to {self.log_dir}/ "
                         "(memrl train --verbose shows it here)")
        self.checkpoints.remove_stale_partials()  # safe: the lock keeps other writers out

        init_ray(cfg, self.log_dir)
        check_fits(cfg, node_totals())
        self._start_actors(resume_from)
        self.scorer = StepScorer(self.plan, self.composer, cfg.grpo.max_completion_length, self.memory)
        self.drift = DriftAlarm(cfg.rollout.max_behaviour_logprob_gap, cfg.grpo.num_generations)
        self.weights: tuple[int, ray.ObjectRef] | None = None  # None: the model folder's weights
        self.version = 0
        self.step = 0
        self.resumed_from = resume_from
        self._inflight: list[tuple[Record, PromptId]] = []
        self._last_save = time.monotonic()
        self._writer: MetricsWriter | None = None
        self._ledger: LedgerWriter | None = None
        if state:
            with phase("resume: loading the learner state", timeout_s=cfg.trainer.timeout_s):
                self.learners.load(f"{resume_from}/{CHECKPOINT_LEARNER_DIR}")
            self.step = int(state["step"])
            self.version = int(state["weight_version"])
            self._publish()
            self._inflight = self._inflight_prompts(state)
            terminal.say(f"resumed from step {self.step} ({resume_from})", result=True)

    def _inflight_prompts(self, state: dict[str, Any]) -> list[tuple[Record, PromptId]]:
        """The next step's prompts that an async-mode checkpoint holds, with their dataset ids
        (a checkpoint written before the ledger has none: the stream is replayed to its place)."""
        records = [Record(**r) for r in state.get("inflight_records", [])]
        if not records:
            return []
        if "inflight_prompts" in state:
            ids = [PromptId(**p) for p in state["inflight_prompts"]]
        else:  # the last prompts the stream handed out before the checkpoint
            replay = PromptStream(self.task.dataset(TRAIN_SPLIT), seed=self.cfg.seed)
            ids = [p for _, p in replay.take(self.stream.state.consumed)[-len(records):]]
        return list(zip(records, ids, strict=True))

    def _start_actors(self, resume_from: str | None) -> None:
        """Start the memory service, the learners and the rollout workers at once, then wait for
        each (:mod:`memrl.actors.startup` reports them by name). The pool needs the others'
        demands only for ``rollout.num_workers: auto``'s arithmetic, not their readiness."""
        from memrl.actors.learner import LearnerGroup
        from memrl.actors.memory import MemoryClient

        cfg, timeout_s = self.cfg, self.cfg.trainer.timeout_s
        parts = ["the memory service"] if cfg.uses_memory else []
        workers = cfg.rollout.num_workers
        parts += [f"{cfg.learner.num_learners} learner(s)",
                  f"{workers} rollout worker(s) (rollout.engine {cfg.rollout.engine})"]
        terminal.say(f"memrl: starting {', '.join(parts)}")
        # Named in the cluster so that `memrl scale` finds this run; read at every step.
        self.controller = RunController(cfg, self.files.control, start_control(cfg.output_dir), self._critical_roles)
        phases = []
        self.memory = None
        if cfg.uses_memory:
            self.memory = memory = MemoryClient(
                memory_settings(cfg), num_shards=cfg.memory.num_shards,
                num_cpus=cfg.memory.num_cpus, num_gpus=cfg.memory.num_gpus,
                resources=cfg.memory.resources,
                snapshot_root=str(self.files.memory.absolute()),
                initial_snapshot=f"{resume_from}/{CHECKPOINT_MEMORY_DIR}" if resume_from else None,
                timeout_s=timeout_s,
            )
            phases.append(StartupPhase("the memory service", ready=memory.poll_ready,
                                       waiting=lambda: memory_demands(cfg)))
        self.learners = learners = LearnerGroup(
            learner_settings(cfg, self.model_path), cfg.learner.num_learners,
            num_cpus_per_learner=cfg.learner.num_cpus, num_gpus_per_learner=cfg.learner.num_gpus,
            resources_per_learner=cfg.learner.resources, timeout_s=timeout_s, wait=False,
        )
        ranks = learner_demands(cfg)
        phases.append(StartupPhase(
            "the learners", ready=learners.poll_ready,
            waiting=lambda: [d for d, node in zip(ranks, learners.node_ids) if node is None]))
        self.pool = pool = RolloutPool(
            rollout_worker_factory(cfg, self.model_path), cfg.rollout.num_workers,
            timeout_s=timeout_s, worker_demand=rollout_demand(cfg, "rollout worker").resources,
            others=ranks + memory_demands(cfg))
        phases.append(StartupPhase(
            f"the {len(pool)} rollout worker(s)", ready=lambda: pool.num_running() == len(pool),
            waiting=lambda: [rollout_demand(cfg, w) for w in pool.joining()],
            detail=lambda: "; ".join(sorted(set(pool.engines().values())))))
        wait_for_phases(phases, timeout_s=timeout_s)

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

    # -- prompts, generation, weights -------------------------------------------------------------
    def render(self, record: Record) -> str:
        """The chat prompt of ``record`` (the same builder as ``memrl eval``)."""
        return record_prompt(self.task, self.tokenizer, record, num_shots=self.cfg.task.num_shots,
                             seed=self.cfg.seed)

    def _launch(self, step: int, taken: list[tuple[Record, PromptId]] | None = None) -> StepGeneration:
        """Take the step's prompts (or the given ones) and start generating them."""
        if taken is None:
            taken = self.stream.take(self.cfg.grpo.prompts_per_step)
        records = [record for record, _ in taken]
        requests = chunk_requests([self.render(r) for r in records], [r.id for r in records],
                                  num_chunks=len(self.pool))
        g = self.cfg.grpo

        def submit(actor: Any, req: GenerationRequest):
            settings = training_sampling(g, request_seed(self.cfg.seed, step, req.index))
            # The weights newest when the request is sent, not when the step was launched: in
            # async mode a request that waited in the queue (no worker free) or is re-sent after
            # a failure must not carry weights older than those in flight.
            return actor.generate.remote(req.prompts, req.record_ids, settings, self.weights)

        return StepGeneration(step=step, records=records, prompts=[p for _, p in taken],
                              pending=self.pool.start(requests, submit))

    def _publish(self) -> float:
        weights_ref, summary = self.learners.publish_weights(self.version)
        self.weights = (self.version, weights_ref)
        return float(summary.get("seconds", 0.0))

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy of the current policy on the held-out records."""
        terminal.say(f"memrl: evaluating the policy at step {self.step} on {len(self.eval_records)} "
                     "held-out problems (greedy)")
        with phase("evaluation", step=self.step, timeout_s=self.cfg.trainer.timeout_s):
            max_tokens = self.cfg.grpo.max_completion_length
            batches = self.pool.generate_batches(
                [self.render(r) for r in self.eval_records], [r.id for r in self.eval_records],
                greedy_sampling(max_tokens), self.weights, greedy=True,
                timeout_s=self.cfg.trainer.timeout_s)
            result = score_greedy(batches, self.eval_records, self.plan, max_tokens, self.task)
        return dataclasses.asdict(result)

    # -- one step --------------------------------------------------------------------------------
    def run_step(self, batch: StepGeneration, next_batch: Callable[[], StepGeneration | None]
                 ) -> tuple[dict[str, Any], dict[str, Any], StepGeneration | None]:
        """Finish ``batch``'s generation, score it, take one optimizer step, publish weights.

        In async mode ``next_batch()`` is called as soon as this step's generation is done, so
        the next step generates while this one scores and trains. Returns the step's metrics,
        its prompt-ledger line (what the learners trained on) and that next batch (None in sync
        mode)."""
        cfg, g = self.cfg, self.cfg.grpo
        clock = StepClock(batch.step + 1, cfg.trainer.timeout_s)
        with clock.phase("generate", "generation", actor="the rollout workers"):
            results = self.pool.finish(batch.pending)
        upcoming = next_batch() if cfg.rollout.mode == "async" else None
        batch_refs = [r.batch_ref for r in results]

        # The learners' reference pass runs while the reward task scores the same batches.
        reference = self.learners.begin_step(batch_refs)
        with clock.timed("score"):
            scores = self.scorer.score(clock.step, batch.records, batch_refs, clock.timeout_s)
        with clock.phase("train", "reference log-probs", actor="the learners"):
            prepared = self.learners.wait_reference(reference)

        rewards = torch.tensor(scores.total, dtype=torch.float32)
        advantages, signal_groups, keep = step_advantages(
            rewards, g.num_generations, scale=g.scale_rewards, filter_zero_variance=g.filter_zero_variance)
        with clock.phase("train", "optimizer step", actor="the learners"):
            train_stats, trained = self.learners.finish_step(prepared, advantages, keep=keep)
        filtered = (~signal_groups).tolist() if keep is not None else [False] * len(batch.records)
        ledger = ledger_line(clock.step, self.task.name, TRAIN_SPLIT, batch.prompts, trained, filtered)

        self.version += 1
        with clock.phase("sync", "weight publish", actor="learner rank 0"):
            publish_seconds = self._publish()

        infos = [r.info for r in results]
        if (drift := self.drift.check(clock.step, train_stats, trained, infos)) is not None:
            log.warning(drift)
        staleness = weight_staleness(self.version, infos, step=clock.step, max_staleness=cfg.rollout.max_staleness)
        work = StepWork(scores=scores, keep_groups=signal_groups, train_stats=train_stats,
                        rollout_infos=infos, durations=clock.durations, step_seconds=clock.elapsed(),
                        records=batch.records, max_completion_length=g.max_completion_length)
        metrics = {**step_metrics(work), **run_state_metrics(
            self.pool, consumed_prompts=self.stream.state.consumed, version=self.version,
            publish_seconds=publish_seconds, staleness=staleness, memory_restarts=self.scorer.memory_restarts,
            memory=self.memory.metrics() if self.memory is not None else {})}
        return metrics, ledger, upcoming

    # -- checkpoints -----------------------------------------------------------------------------
    def save_checkpoint(self, upcoming: StepGeneration | None = None) -> str:
        """Write ``checkpoints/step_N`` atomically; ``latest`` names it once complete."""
        with phase("checkpoint", step=self.step, timeout_s=self.cfg.trainer.timeout_s):
            started = time.perf_counter()
            partial = self.checkpoints.begin(self.step)
            learner_files = self.learners.save(f"{partial}/{CHECKPOINT_LEARNER_DIR}", export_hf=True)
            files = {f"{CHECKPOINT_LEARNER_DIR}/{name}": entry for name, entry in learner_files.items()}
            if self.memory is not None:
                self.memory.snapshot(f"{partial}/{CHECKPOINT_MEMORY_DIR}")
            state = {
                "step": self.step,
                "weight_version": self.version,
                "stream": self.stream.state.to_dict(),
                "torch_rng": torch.get_rng_state().tolist(),
                # async mode: prompts already taken from the stream for the next step
                "inflight_records": [dataclasses.asdict(r) for r in upcoming.records] if upcoming else [],
                "inflight_prompts": [dataclasses.asdict(p) for p in upcoming.prompts] if upcoming else [],
                "config": self.cfg.model_dump(mode="json"),
                # metrics.jsonl lines up to here: a resume drops the lines logged after them
                "metrics_lines": self._writer.lines if self._writer is not None else 0,
                "ledger_lines": self._ledger.lines if self._ledger is not None else 0,
            }
            uri = self.checkpoints.complete(partial, self.step, state, files=files)
            if self.memory is not None:  # the snapshot moved with the rename of the partial dir
                self.memory.remember_snapshot(f"{uri}/{CHECKPOINT_MEMORY_DIR}")
        self._last_save = time.monotonic()
        log.info("checkpoint step %d written in %.1f s: %s", self.step, time.perf_counter() - started, uri)
        return uri

    def _checkpoint_due(self) -> bool:
        t = self.cfg.trainer
        by_steps = t.save_every_steps > 0 and self.step % t.save_every_steps == 0
        by_time = t.save_every_minutes > 0 and time.monotonic() - self._last_save >= 60 * t.save_every_minutes
        return by_steps or by_time

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``trainer.max_steps``; returns the run summary (also ``summary.json``)."""
        cfg, controller, pool = self.cfg, self.controller, self.pool
        started = time.time()
        resumed_at = self.step if self.resumed_from else None
        summary = RunSummary(cfg, self.files, resumed_at=resumed_at, export_best=self.learners.export_hf)
        writer = self._writer = MetricsWriter(
            self.run_dir, tensorboard=cfg.logging.tensorboard,
            wandb_project=cfg.logging.wandb_project, run_name=self.run_dir.name,
            config=cfg.model_dump(mode="json"),
            keep_lines=self.metrics_lines if self.resumed_from else 0, resume_step=resumed_at)
        ledger = self._ledger = LedgerWriter(self.files.ledger, keep_lines=self.ledger_lines,
                                             resume_step=resumed_at)
        controller.arm_sigterm()
        if cfg.trainer.eval_before_after and not summary.has_before:
            before = self.evaluate()
            summary.record_before(before)
            writer.log(self.step, {f"eval/{k}": v for k, v in before.items()})
        accuracy_after = None
        bar = _progress(cfg, self.step)
        try:
            batch: StepGeneration | None = None
            if self.step < cfg.trainer.max_steps:
                controller.apply(pool)
                batch = self._launch(self.step, self._inflight or None)
            while batch is not None:
                following = batch.step + 1
                last = following >= cfg.trainer.max_steps
                metrics, line, upcoming = self.run_step(
                    batch, lambda following=following, last=last: None if last else self._launch(following))
                self.step += 1
                ledger.append(line)  # before the metrics line: a step logged is a step recorded
                writer.log(self.step, metrics)
                controller.report(self.step, pool)
                _show(bar, metrics)
                controller.watch_drains(pool)
                if controller.preempting:
                    self.save_checkpoint(upcoming)
                    raise Preempted(PREEMPTED_EXIT_CODE)
                if cfg.trainer.eval_every_steps and self.step % cfg.trainer.eval_every_steps == 0 \
                        and not last:
                    self._periodic_eval(writer, summary)
                if self._checkpoint_due() or last:
                    self.save_checkpoint(upcoming)
                if not last:  # the pool follows the cluster and the requests before the launch
                    controller.apply(pool)
                batch = None if last else (upcoming or self._launch(self.step))
            if bar is not None:
                bar.close()
                bar = None
            if cfg.trainer.eval_before_after or cfg.trainer.eval_every_steps:
                accuracy_after = self._periodic_eval(writer, summary)
        finally:
            if bar is not None:
                bar.close()
            writer.close()
            ledger.close()
        with phase("final export (model, memory)", step=self.step, timeout_s=cfg.trainer.timeout_s):
            self.learners.export_hf(self.files.model)
            if self.memory is not None:
                self.memory.snapshot(str(self.files.final_memory.absolute()))
        return summary.finish(steps=self.step, wall_seconds=time.time() - started,
                              accuracy_after=accuracy_after, starting_model=self.model_path)

    def _periodic_eval(self, writer: MetricsWriter, summary: RunSummary) -> float:
        """Evaluate now; keep the best model so far in ``OUTPUT_DIR/best_model``."""
        result = self.evaluate()
        writer.log(self.step, {f"eval/{k}": v for k, v in result.items()})
        return summary.record_eval(self.step, result)

    def close(self) -> None:
        """Stop the run's actors (the Ray cluster itself is left running) and release the run
        directory; safe after a failed start-up and when called twice."""
        started = {name: self.__dict__.pop(name) for name in ("pool", "learners", "memory", "controller")
                   if self.__dict__.get(name) is not None}
        try:
            if "pool" in started:
                started["pool"].resize(0, allow_empty=True)
            if "learners" in started:
                started["learners"].shutdown()
            if "memory" in started:
                started["memory"].shutdown()
        finally:
            # Last: a preemption watchdog still fires if stopping the actors overran the deadline.
            if "controller" in started:
                started["controller"].close()
            self._quiet.close()
            self.lock.release()


def _progress(cfg: Config, initial: int) -> Any:
    if not cfg.logging.progress_bar:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.trainer.max_steps, initial=initial, desc="train", unit="step",
                dynamic_ncols=True, file=terminal.err)


def _show(bar: Any, metrics: dict[str, Any]) -> None:
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(reward=f"{metrics['reward/total/mean']:.3f}", acc=f"{metrics['accuracy']:.2f}",
                    tok_s=f"{metrics['throughput/tokens_per_s']:.0f}")


def run_training(cfg: Config, resume: str = "none", *, quiet: bool = False) -> dict[str, Any]:
    """Train with ``cfg``; returns the run summary (also written to ``summary.json``).

    ``resume``: ``none`` (fresh), ``auto`` (the latest complete checkpoint if any) or a
    checkpoint directory/URI. ``quiet``: the libraries' and actors' output goes to
    ``OUTPUT_DIR/logs/`` instead of the terminal (``memrl train`` without ``--verbose``).
    """
    trainer = Trainer(cfg, resume=resume, quiet=quiet)
    try:
        return trainer.run()
    finally:
        trainer.close()
