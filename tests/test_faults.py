"""Fault injection on a local Ray cluster: dead rollout worker, dead memory actor, dead learner,
live resizing of the rollout pool, and the async mode's staleness bound. Every run directory is
audited (``memrl audit``): each scheduled prompt trained exactly once, in order."""

import threading
import time
from pathlib import Path

import pytest
import ray
from trainer_configs import assert_audit_clean, make_config

from memrl.actors.learner import LearnerError
from memrl.rollout.engine import SamplingSettings
from memrl.train.data_stream import PromptStream
from memrl.train.loop import Trainer
from memrl.train.metrics import read_metrics
from memrl.types import RolloutBatch

pytestmark = pytest.mark.slow

HASH_MEMORY = "memory.embedder=hash"  # model-free embedder: these tests are about faults


def wait_for(predicate, timeout_s: float = 300.0, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(every_s)


def ping_when_back(actor, timeout_s: float = 180.0) -> dict:
    """The actor's ping once Ray has restarted it (calls fail fast while it restarts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.ping.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def logged_steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").is_file():
        return []
    return [m["step"] for m in read_metrics(run) if "reward/total/mean" in m]


def test_killed_rollout_worker_loses_no_prompt_group(ray_cluster, tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=2", HASH_MEMORY, "trainer.eval_before_after=false")
    trainer = Trainer(cfg)
    try:
        victim_id, victim = next(iter(trainer.pool.workers.items()))
        old_pid = ray.get(victim.ping.remote(), timeout=60)["pid"]
        batch = trainer._launch(0)
        ray.kill(victim, no_restart=False)  # dies with its request in flight
        results = trainer.pool.finish(batch.pending)
        batches: list[RolloutBatch] = ray.get([r.batch_ref for r in results], timeout=120)
        ids = sorted(i for b in batches for i in b.record_ids)
        expected = sorted(r.id for r in batch.records for _ in range(cfg.grpo.num_generations))
        assert ids == expected  # every prompt group came back, each exactly once
        assert trainer.pool.events.failures == 1 and trainer.pool.events.redispatched == 1
        assert {b.worker_id for b in batches} != {victim_id}

        # That batch took step 1's prompts from the stream: rewind it, so the run trains them
        # (the audit below would report them lost otherwise).
        trainer.stream = PromptStream(trainer.task.dataset("train"), seed=cfg.seed)
        summary = trainer.run()  # training goes on while Ray restarts the victim

        reborn = ping_when_back(victim)
        assert reborn["pid"] != old_pid
        # A restarted worker starts from the model folder and catches up on its next request.
        ray.get(victim.generate.remote(["x"], ["x"], SamplingSettings(max_tokens=2, num_generations=1),
                                       trainer.weights)[1], timeout=120)
        assert ray.get(victim.ping.remote(), timeout=60)["weight_version"] == trainer.version == 2
    finally:
        trainer.close()
    assert summary["steps"] == 2
    assert_audit_clean(cfg.output_dir, 2)


def test_killed_memory_actor_restarts_from_its_snapshot(ray_cluster, tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=4", "trainer.save_every_steps=2", HASH_MEMORY,
                      "trainer.eval_before_after=false")
    run = Path(cfg.output_dir)
    trainer = Trainer(cfg)
    try:
        def kill_after_checkpoint() -> None:
            wait_for(lambda: (run / "checkpoints/latest").is_file())
            ray.kill(trainer.memory.actor, no_restart=False)

        killer = threading.Thread(target=kill_after_checkpoint)
        killer.start()
        summary = trainer.run()
        killer.join()
    finally:
        trainer.close()
    assert summary["steps"] == 4
    steps = [m for m in read_metrics(run) if "reward/total/mean" in m]
    assert steps[-1]["memory/restarted"] == 1.0
    # Restored from the step-2 snapshot (32 entries), then steps 3 and 4 added 16 each: entries
    # inserted between the snapshot and the kill are the documented loss (none here).
    stored = [m["memory/success_values"] + m["memory/failure_values"] for m in steps]
    assert stored == [16.0, 32.0, 48.0, 64.0]
    assert_audit_clean(run, 4)


def test_dead_learner_stops_the_job_and_resume_continues(ray_cluster, tmp_path, capsys):
    cfg = make_config(tmp_path, "trainer.max_steps=4", "trainer.save_every_steps=2", HASH_MEMORY,
                      "trainer.eval_before_after=false")
    run = Path(cfg.output_dir)
    trainer = Trainer(cfg)
    try:
        def kill_learner() -> None:
            wait_for(lambda: (run / "checkpoints/latest").is_file())
            ray.kill(trainer.learners.workers[0])

        killer = threading.Thread(target=kill_learner)
        killer.start()
        with pytest.raises(LearnerError, match=r"learner rank 0 on node .* failed in"):
            trainer.run()
        killer.join()
    finally:
        trainer.close()
    assert (run / "checkpoints/latest").read_text().strip() == "step_2"

    resumed = Trainer(cfg, resume="auto")
    workers = set(resumed.pool.workers)
    first: list[dict] = []  # the infos of the resumed run's first generation
    finish = resumed.pool.finish

    def note_first(pending):
        results = finish(pending)
        if not first:
            first.extend(r.info for r in results)
        return results

    resumed.pool.finish = note_first
    try:
        summary = resumed.run()
    finally:
        resumed.close()
    assert "resumed from step 2" in capsys.readouterr().out
    assert summary["steps"] == 4 and summary["resumed_from_step"] == 2
    assert logged_steps(run)[-2:] == [3, 4]
    # Every worker's first generation after the resume used the checkpoint's weights (version 2).
    assert {i["worker_id"] for i in first} == workers and {i["weight_version"] for i in first} == {2}
    # The killed run's uncommitted step 3 (if it got that far) was replaced, not added to.
    assert_audit_clean(run, 4)


def test_workers_added_and_removed_while_training(ray_cluster, tmp_path):
    # Six steps: each resize is read before the next step, and the resizer thread only sees a
    # step once it is logged, so the shrink gets steps 5-6 to take effect whatever the timing.
    cfg = make_config(tmp_path, "trainer.max_steps=6", HASH_MEMORY, "trainer.eval_before_after=false")
    run = Path(cfg.output_dir)
    trainer = Trainer(cfg)
    try:
        def resize() -> None:
            wait_for(lambda: 1 in logged_steps(run))
            (run / "control.yaml").write_text("rollout:\n  num_workers: 3\n")
            wait_for(lambda: 3 in logged_steps(run))
            (run / "control.yaml").write_text("rollout:\n  num_workers: 1\n")

        resizer = threading.Thread(target=resize)
        resizer.start()
        summary = trainer.run()
        resizer.join()
    finally:
        trainer.close()
    steps = [m for m in read_metrics(run) if "reward/total/mean" in m]
    workers = [m["rollout/num_workers_requested"] for m in steps]
    assert workers[0] == 2 and 3 in workers and workers[-1] == 1
    # The logged count is of workers really running: a new one counts once it answers.
    assert all(m["rollout/num_workers"] <= m["rollout/num_workers_requested"] for m in steps)
    assert steps[0]["rollout/num_workers"] == 2 and steps[-1]["rollout/num_workers"] == 1
    assert summary["steps"] == 6
    # No prompt group lost: every step trained on the full batch of completions.
    assert [m["train/sequences"] for m in steps] == [16.0] * 6
    assert_audit_clean(run, 6)


def test_async_mode_trains_one_version_behind_with_is_correction(ray_cluster, tmp_path):
    cfg = make_config(tmp_path, "trainer.max_steps=3", "rollout.mode=async", "rollout.max_staleness=1",
                      HASH_MEMORY, "trainer.eval_before_after=false")
    trainer = Trainer(cfg)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    steps = [m for m in read_metrics(Path(cfg.output_dir)) if "reward/total/mean" in m]
    assert summary["steps"] == 3
    staleness = [m["weights/staleness"] for m in steps]
    assert staleness[0] == 0.0 and staleness[1:] == [1.0, 1.0]
    assert all(s <= cfg.rollout.max_staleness for s in staleness)
    assert steps[-1]["train/stale_token_frac"] == 1.0 and "train/is_weight_mean" in steps[-1]
    assert_audit_clean(cfg.output_dir, 3)  # one version behind: within rollout.max_staleness
