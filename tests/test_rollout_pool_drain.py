"""The rollout pool against a cluster view it is given: a draining node's worker gets no new
requests, its request that would miss the deadline is re-sent, and once idle it is replaced;
a worker whose node is gone leaves the dispatch. Real actors on the session cluster, fake
nodes (the workers report them), so it runs in seconds."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import ray

from memrl.actors.cluster import ClusterWatch
from memrl.actors.rollout_pool import RolloutPool
from memrl.cluster.capacity import ClusterState
from memrl.cluster.placement import Demand
from memrl.cluster.requests import chunk_requests


@ray.remote(num_cpus=0.1, max_restarts=-1, max_task_retries=0, max_concurrency=2)
class FakeWorker:
    """Reports a fake node and returns its prompts after ``seconds``."""

    def __init__(self, worker_id: str, node: str):
        self.worker_id, self.node = worker_id, node

    def ping(self) -> dict:
        return {"node_id": self.node}

    @ray.method(num_returns=2)
    def generate(self, prompts: list[str], seconds: float):
        time.sleep(seconds)
        return list(prompts), {"worker_id": self.worker_id}


def _pool(view: dict[str, ClusterState], nodes: dict[str, str]) -> RolloutPool:
    return RolloutPool(lambda w: FakeWorker.remote(w, nodes.get(w, "spot-c")), 2, timeout_s=60,
                       watch=ClusterWatch(every_s=0.0, read=lambda: view["now"]))


def _run(pool: RolloutPool, step: int, slow: dict[str, float], fault=None) -> Counter:
    prompts = [f"s{step}-p{i}" for i in range(4)]
    pending = pool.start(chunk_requests(prompts, prompts, 4),
                         lambda actor, r: actor.generate.remote(r.prompts, slow.get(r.record_ids[0], 0.2)))
    if fault is not None:
        fault()
    results = pool.finish(pending)
    got = Counter(p for batch in ray.get([r.batch_ref for r in results]) for p in batch)
    assert got == Counter(prompts), got  # every prompt group exactly once
    return Counter(r.info["worker_id"] for r in results)


def test_draining_node_gets_no_new_work_late_requests_move_and_its_worker_is_replaced(ray_cluster):
    nodes = {"rollout-0": "spot-a", "rollout-1": "spot-b"}
    alive = {"spot-a": {}, "spot-b": {}, "spot-c": {}}
    view = {"now": ClusterState(totals=alive)}
    pool = _pool(view, nodes)
    try:
        pool.wait_until_ready()
        assert _run(pool, 0, {}) == Counter({"rollout-0": 2, "rollout-1": 2})

        # spot-a gets a 1 s notice while its worker runs a 3 s request: re-sent elsewhere.
        def notice():
            time.sleep(0.3)
            view["now"] = ClusterState(totals=alive, draining={"spot-a": time.time() + 1.0})

        used = _run(pool, 1, {"s1-p0": 3.0}, fault=notice)
        assert pool.events.resent_groups == 1 and pool.events.preempted_workers == 1
        assert pool.events.lost_work_s > 0 and pool.events.draining_nodes_seen == 1
        assert "rollout-0" not in pool.workers and "rollout-2" in pool.workers  # replaced
        assert used["rollout-0"] <= 1  # at most the request it finished before the notice

        pool.wait_until_ready()
        assert set(_run(pool, 2, {})) == {"rollout-1", "rollout-2"}  # the replacement works

        # spot-b vanishes between steps: its worker leaves the dispatch before anything is
        # sent to it (no failure, no re-send), and the target stays 2.
        view["now"] = ClusterState(totals={"spot-c": {}})
        failures, resent = pool.events.failures, pool.events.resent_groups
        assert _run(pool, 3, {}) == Counter({"rollout-2": 4})
        assert (pool.events.failures, pool.events.resent_groups) == (failures, resent)
        assert pool.events.preempted_workers == 2 and len(pool) == 2
    finally:
        pool.resize(0, allow_empty=True)


@pytest.mark.slow
def test_trainer_checkpoints_and_exits_when_the_learners_node_drains(ray_cluster, tmp_path):
    from trainer_configs import make_config

    from memrl.checkpoint import CheckpointManager
    from memrl.train.loop import Trainer
    from memrl.train.run_control import PREEMPTED_EXIT_CODE, PREEMPTION_WATCHDOG, Preempted

    cfg = make_config(tmp_path, "trainer.max_steps=4", "trainer.save_every_steps=0",
                      "memory.embedder=hash", "trainer.eval_before_after=false")
    trainer = Trainer(cfg)
    try:
        node = trainer.learners.node_ids[0]
        real = trainer.pool.cluster()
        # The learner's node gets a 60 s notice once the first step is under way.
        noticed = ClusterState(totals=real.totals, draining={node: time.time() + 60})
        trainer.pool._watch = ClusterWatch(every_s=0.0, read=lambda: noticed if trainer.step >= 1 else real)
        with pytest.raises(Preempted) as stopped:
            trainer.run()
    finally:
        trainer.close()
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    manager = CheckpointManager(str(cfg.output_dir))
    assert manager.verify(manager.latest())["step"] == 1  # written right after step 1
    # The deadline watchdog (60 s here) is disarmed by close(): it used to outlive the run and
    # end this pytest process with os._exit(143) a minute later, in whatever test ran then.
    watchdogs = [t for t in threading.enumerate() if t.name == PREEMPTION_WATCHDOG]
    for t in watchdogs:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in watchdogs), watchdogs


def test_a_request_for_more_workers_than_the_cluster_holds_is_capped_and_said_once(ray_cluster, caplog):
    # Two fake 2-CPU nodes, one taken by the learner and the memory: 2 + 0 workers of 1 CPU fit.
    view = {"now": ClusterState(totals={"spot-a": {"CPU": 2.0}, "spot-b": {"CPU": 2.0}})}
    pool = RolloutPool(lambda w: FakeWorker.remote(w, "spot-a"), 1, timeout_s=60,
                       watch=ClusterWatch(every_s=0.0, read=lambda: view["now"]), worker_demand={"CPU": 1.0},
                       others=[Demand("learner rank 0", {"CPU": 1.0}, ""), Demand("memory shard 0", {"CPU": 1.0}, "")])
    try:
        with caplog.at_level("WARNING", logger="memrl.actors.rollout_pool"):
            pool.set_target(10**12)  # what control.yaml or memrl scale may ask for
            pool.refresh()  # the next step: the same request is not said again
        assert len(pool) == 2 and pool.requested == 10**12
        capped = [r.getMessage() for r in caplog.records if "more than this run can ever place" in r.getMessage()]
        assert capped == ["rollout.num_workers = 1000000000000 is more than this run can ever place (the "
                          "cluster's nodes hold 2 beside the learners and the memory service): running 2; "
                          "training goes on"], capped
        pool.set_target(1)
        assert len(pool) == 1
    finally:
        pool.resize(0, allow_empty=True)


@ray.remote(num_cpus=0.1, max_restarts=-1, max_task_retries=0)
class WorkerThatCannotStart:
    def __init__(self, worker_id: str):
        raise RuntimeError(f"rollout engine 'vllm' cannot start on {worker_id}: no vLLM here")

    def ping(self) -> dict:
        return {}


def test_a_worker_whose_start_fails_stops_the_wait_at_once_with_its_error(ray_cluster):
    from memrl.actors.rollout_pool import RolloutWorkerStartError

    pool = RolloutPool(lambda w: WorkerThatCannotStart.remote(w), 1, timeout_s=600,
                       watch=ClusterWatch(every_s=0.0, read=lambda: ClusterState(totals={"n": {}})))
    started = time.monotonic()
    try:
        with pytest.raises(RolloutWorkerStartError) as info:
            pool.wait_until_ready()
    finally:
        pool.resize(0, allow_empty=True)
    assert time.monotonic() - started < 60  # not the 600 s start-up limit
    assert str(info.value).startswith("rollout-0: RuntimeError: rollout engine 'vllm' cannot start on "
                                      "rollout-0: no vLLM here")
