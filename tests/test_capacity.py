"""The pure decisions about a changing cluster (memrl.cluster.capacity), without Ray."""

from __future__ import annotations

import math

import pytest

from memrl.cluster.capacity import (
    AUTO,
    ClusterState,
    InFlight,
    auto_worker_count,
    critical_drains,
    drain_plan,
    draining_deadlines,
    parse_worker_count,
    target_worker_count,
    worker_ceiling,
)
from memrl.cluster.placement import Demand
from memrl.config import MAX_ROLLOUT_WORKERS
from memrl.train.run_control import read_control

SPOT = {"CPU": 1.0, "rollout_node": 0.01}


def test_worker_counts_are_numbers_or_auto_and_bad_ones_name_the_key():
    assert parse_worker_count(3) == 3 and parse_worker_count("4") == 4
    assert parse_worker_count("AUTO") == AUTO
    for bad, said in [(0, "a run needs a worker"), ("many", "'many'"), (True, "True"), (2.5, "2.5")]:
        with pytest.raises(ValueError, match=r"memrl scale = .*" + said.replace("(", r"\(")):
            parse_worker_count(bad, key="memrl scale")
    assert read_control("rollout: {num_workers: auto}") == (AUTO, None)
    assert read_control("rollout: {num_workers: 0}")[1].startswith("rollout.num_workers = 0 is below 1")


def test_auto_counts_what_the_spot_nodes_hold_after_the_other_actors():
    nodes = {"head": {"CPU": 4.0}, "spot-a": {"CPU": 2.0, "rollout_node": 1.0},
             "spot-b": {"CPU": 3.0, "rollout_node": 1.0}}
    learner = Demand("learner rank 0", {"CPU": 2.0}, "")
    memory = Demand("memory shard 0", {"CPU": 1.0}, "")
    assert auto_worker_count(nodes, SPOT, [learner, memory]) == 5  # 2 + 3: the head has no rollout_node
    # Without a custom resource the head's CPUs left by the learner and memory count too.
    assert auto_worker_count(nodes, {"CPU": 1.0}, [learner, memory]) == 1 + 2 + 3
    assert auto_worker_count({"head": {"CPU": 4.0}}, SPOT) == 1  # none fits: still ask for one
    assert auto_worker_count(nodes, {}, []) == 3  # a worker asking for nothing: one per node


def test_target_follows_the_cluster_for_auto_and_ignores_draining_nodes():
    totals = {"head": {"CPU": 2.0}, "spot-a": {"CPU": 2.0, "rollout_node": 1.0},
              "spot-b": {"CPU": 2.0, "rollout_node": 1.0}}
    grown = ClusterState(totals=totals)
    draining = ClusterState(totals=totals, draining={"spot-b": 1e12})
    assert target_worker_count(AUTO, grown, SPOT) == 4
    assert target_worker_count(AUTO, draining, SPOT) == 2
    assert target_worker_count(3, draining, SPOT) == 3  # a number is a number


def test_a_worker_count_is_capped_at_what_the_cluster_can_ever_hold():
    totals = {"head": {"CPU": 4.0}, "spot-a": {"CPU": 2.0, "rollout_node": 1.0}}
    others = [Demand("learner rank 0", {"CPU": 2.0}, ""), Demand("memory shard 0", {"CPU": 1.0}, "")]
    # Every live node counts, a draining one too (it is usually replaced).
    state = ClusterState(totals=totals, draining={"spot-a": 1e12})
    assert worker_ceiling(state, {"CPU": 1.0}, others) == 1 + 2
    assert worker_ceiling(state, SPOT, others) == 2
    # A cluster that adds nodes on demand, or a worker that asks for nothing: the stated maximum.
    assert worker_ceiling(state, {"CPU": 1.0}, others, autoscales=True) == MAX_ROLLOUT_WORKERS
    assert worker_ceiling(state, {}, others) == MAX_ROLLOUT_WORKERS
    many = ClusterState(totals={f"n{i}": {"CPU": 64.0} for i in range(32)})
    assert worker_ceiling(many, {"CPU": 1.0}) == MAX_ROLLOUT_WORKERS


def test_draining_deadlines_from_ray_milliseconds():
    assert draining_deadlines({"a": 1_700_000_000_500, "b": 0}) == {"a": 1_700_000_000.5, "b": math.inf}


def test_drain_plan_resends_what_will_not_finish_and_retires_idle_workers():
    nodes = {"w0": "spot-a", "w1": "spot-a", "w2": "spot-b", "w3": "gone-node", "w4": None}
    wall = 1000.0
    state = ClusterState(totals={"spot-a": {}, "spot-b": {}}, draining={"spot-a": wall + 10.0})
    inflight = [InFlight("early", "w0", started=95.0),  # sent 5 s ago; needs 6 s; 1 s left
                InFlight("late", "w1", started=99.0),  # sent 1 s ago: 5 s to go, 7 s + margin ok
                InFlight("safe", "w2", started=90.0)]
    plan = drain_plan(nodes, inflight, state, now=100.0, wall_now=wall, expected_s=6.0)
    assert plan.avoid == {"w0", "w1", "w3"} and plan.gone == {"w3"}
    assert plan.resend == ()  # w0 ends at 101 (1 s + 2 s margin <= 10 s), w1 at 105
    tight = ClusterState(totals=state.totals, draining={"spot-a": wall + 4.0})
    plan = drain_plan(nodes, inflight, tight, now=100.0, wall_now=wall, expected_s=6.0)
    assert plan.resend == ("late",)  # 5 s of work + 2 s margin > 4 s left; w0's 1 + 2 fits
    assert plan.retire == {"w1"}  # its request moves: idle, replace it; w0 is still busy
    unknown = drain_plan(nodes, inflight, tight, now=100.0, wall_now=wall, expected_s=None)
    assert set(unknown.resend) == {"early", "late"}  # no request finished yet: nothing says it will
    open_ended = ClusterState(totals=state.totals, draining={"spot-a": math.inf})
    assert drain_plan(nodes, inflight, open_ended, now=100.0, wall_now=wall, expected_s=None).resend == ()


def test_critical_drains_name_the_role_soonest_first():
    state = ClusterState(totals={"head": {}, "gpu": {}}, draining={"gpu": 50.0, "head": 90.0})
    roles = {"the driver": "head", "learner rank 0": "gpu", "the memory service": None}
    assert critical_drains(roles, state) == [("learner rank 0", "gpu", 50.0), ("the driver", "head", 90.0)]
    assert critical_drains({"learner rank 0": "other"}, state) == []


def test_memrl_scale_refuses_a_bad_count_before_reaching_any_cluster(capsys):
    from memrl.cli import main

    assert main(["scale", "0"]) == 2
    assert "memrl scale NUM_WORKERS = 0: a run needs a worker" in capsys.readouterr().err
