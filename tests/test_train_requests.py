"""The plain parts of the driver's Ray side, without Ray: request chunks, least-loaded
dispatch, the fit check and the start-up line naming the actors still waiting."""

from __future__ import annotations

import pytest

from memrl.cluster.placement import (
    Demand,
    check_fits,
    learner_demands,
    rollout_demand,
    run_demands,
    waiting_report,
)
from memrl.cluster.requests import chunk_requests, least_loaded
from memrl.config import load_config
from memrl.errors import RuntimeFault


def test_chunks_are_contiguous_nearly_equal_and_never_empty():
    requests = chunk_requests([f"p{i}" for i in range(7)], [f"r{i}" for i in range(7)], num_chunks=3)
    assert [r.prompts for r in requests] == [["p0", "p1"], ["p2", "p3", "p4"], ["p5", "p6"]]
    assert [r.index for r in requests] == [0, 1, 2]
    assert requests[1].record_ids == ["r2", "r3", "r4"]
    assert len(chunk_requests(["a", "b"], ["1", "2"], num_chunks=5)) == 2  # one prompt each


def test_least_loaded_prefers_idle_then_healthy_workers():
    ready = ["w0", "w1", "w2"]
    assert least_loaded(ready, {"w0"}, set()) == "w1"  # one request per worker: an idle one
    assert least_loaded(ready, set(ready), set()) is None
    # w1 failed this step: while a healthy worker is busy, w1 gets nothing ...
    assert least_loaded(ready, {"w0", "w2"}, {"w1"}) is None
    assert least_loaded(ready, {"w0"}, {"w1"}) == "w2"
    # ... and it gets work again only when every ready worker has failed.
    assert least_loaded(["w1"], set(), {"w1"}) == "w1"
    assert least_loaded([], set(), set()) is None


def test_fit_check_names_the_actors_a_node_cannot_hold(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "rollout.num_workers=2",
                             "rollout.num_cpus_per_worker=1", "learner.num_cpus=1"])
    assert len(run_demands(cfg)) == 2 + cfg.learner.num_learners + \
        (cfg.memory.num_shards if cfg.uses_memory else 0)
    check_fits(cfg, [{"CPU": 16.0}])  # everything fits: no error
    with pytest.raises(RuntimeFault, match=r"no room for .*\(CPU 1\)") as info:
        check_fits(cfg, [{"CPU": 1.0}])
    assert "node 0: CPU 1" in str(info.value)


def test_waiting_report_lists_what_memrl_created_and_waits_for(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "rollout.num_cpus_per_worker=2",
                             "rollout.resources={spot_node: 0.5}"])
    waiting = [rollout_demand(cfg, "rollout-1"), rollout_demand(cfg, "rollout-3")]
    line = waiting_report("start-up of the rollout workers", 12.4, waiting,
                          {"CPU": 1.0, "GPU": 0.0, "memory": 1e9, "node:10.0.0.1": 1.0, "spot_node": 0.0,
                           "bundle_group_0_9aee": 999.999, "CPU_group_0_9aee": 1.0, "CPU_group_9aee": 1.0})
    assert line == ("memrl: still in start-up of the rollout workers after 12 s; 2 actor(s) not ready "
                    "yet: rollout-1 (CPU 2, spot_node 0.5) pending placement or starting; rollout-3 "
                    "(CPU 2, spot_node 0.5) pending placement or starting; free in the cluster now: "
                    "CPU 1, GPU 0, spot_node 0")
    # An actor that said what it does while it starts is shown doing it, for how long.
    line = waiting_report("start-up of the rollout workers", 30, waiting, {"CPU": 0.0},
                          {"rollout-3": ("starting the vllm engine (model /m)", 21.6)})
    assert "rollout-1 (CPU 2, spot_node 0.5) pending placement or starting; rollout-3 (CPU 2, " \
        "spot_node 0.5) starting the vllm engine (model /m) for 22 s; free" in line
    ranks = [Demand(f"learner rank {i}", {"CPU": 1.0, "GPU": 1.0}, "") for i in range(10)]
    line = waiting_report("start-up of the learners", 3, ranks, {})
    assert "learner rank 7 (CPU 1, GPU 1) pending placement or starting and 2 more;" in line
    assert "learner rank 8" not in line
    assert line.endswith("free in the cluster now: nothing")
    assert [d.actor for d in learner_demands(cfg)] == [f"learner rank {i}" for i in range(cfg.learner.num_learners)]
    # Nothing left to place (the phase waits on something else, e.g. a model load): no list.
    assert waiting_report("evaluation", 5, [], {"CPU": 2.0}) == \
        "memrl: still in evaluation after 5 s; free in the cluster now: CPU 2"
