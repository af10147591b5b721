"""Spot-instance faults on a multi-node Ray cluster (``ray.cluster_utils.Cluster``).

One module fixture runs ``python -m bench.spot`` once, in a subprocess (its own Ray cluster and
temp dir, so it never meets the session cluster of ``tests/conftest.py``), with every scenario:
a rollout node removed mid-step and capacity returning, a rollout node drained with a
deadline and then gone, ``rollout.num_workers=auto`` while nodes come and go plus a scale
request, the memory service's node removed (snapshot on shared storage, on a remote
filesystem, then unreachable), and the learner's
node removed or drained, then resumed. Each test checks one scenario's numbers; every
scenario's run directory is audited (``memrl audit``: the prompt ledger of what the learners
trained on, against the prompt stream replayed from the config), and every scheduled prompt of
every committed step must have been trained exactly once, in order, on fresh enough weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memrl.train.run_control import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("spot")
    out = work / "outcomes.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)  # the workers import this checkout, as the driver does
    done = subprocess.run([sys.executable, "-m", "bench.spot", "--json", str(out), "--work-dir", str(work)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
                          # Its own session: signals among the fake nodes' processes (a drained
                          # raylet stopping) must not reach pytest's process group.
                          start_new_session=True)
    assert done.returncode == 0 and out.is_file(), done.stderr[-6000:]
    print(done.stdout)  # the scenario table, shown with pytest -s
    return {o["scenario"]: o for o in json.loads(out.read_text())}


def _exactly_once(o: dict) -> None:
    audit = o["audit"]
    assert audit["steps"] == o["steps_completed"] > 0 and audit["scheduled"] == 4 * audit["steps"], o
    assert audit["clean"] and set(audit["counts"].values()) == {0}, o


def test_rollout_node_lost_mid_step_loses_nothing_and_the_pool_refills(outcomes):
    o = outcomes["rollout_lost"]
    assert (o["error"], o["steps_completed"], o["hit_step"]) == ("", 10, 3), o
    _exactly_once(o)
    f = o["facts"]
    hit = o["hit_step"] - 1
    # The step in flight failed over once; later steps never sent work to the lost worker.
    assert f["failures"][hit] == 1 and f["failures"][-1] == 1, f
    assert f["num_workers"][:hit] == [2] * hit and f["num_workers"][hit] == 1, f
    assert f["num_workers"][-1] == 2 and f["refill_wait_s"] < 120, f  # back once a node joined
    assert f["preempted_workers"] == 1 and max(f["staleness"]) == 0, f  # current weights
    assert 0 < o["work_lost_s"] < 60, o


def test_drained_rollout_node_gets_no_new_groups_and_late_ones_are_resent(outcomes):
    o = outcomes["rollout_drain"]
    assert (o["error"], o["steps_completed"]) == ("", 7), o
    _exactly_once(o)
    f = o["facts"]
    assert max(f["draining_nodes_seen"]) == 1 and f["preempted_workers"] >= 1, f
    assert f["resent_groups"] >= 1 and o["work_lost_s"] > 0, o  # 1 s deadline: re-sent at once
    assert f["requests_on_drained_node_after"] == 0, f
    assert f["num_workers"][-1] == 2, f  # the replacement started on the node that joined


def test_auto_worker_count_follows_the_nodes_and_a_scale_request(outcomes):
    o = outcomes["auto"]
    assert (o["error"], o["steps_completed"]) == ("", 8), o
    _exactly_once(o)
    f = o["facts"]
    # 2 spot nodes; a third joins while step 2 runs (3 workers from step 3) and leaves while
    # step 5 runs (2 from step 6); `memrl scale`'s control actor asks for 1 during step 7.
    assert f["num_workers_requested"] == [2, 2, 3, 3, 3, 2, 2, 1], f
    assert f["num_workers"][3] == 3 and f["num_workers"][-1] == 1, f


def test_memory_node_lost_restarts_from_its_snapshot(outcomes):
    o = outcomes["memory_lost"]
    assert (o["error"], o["steps_completed"]) == ("", 6), o
    _exactly_once(o)
    f = o["facts"]
    assert f["memory_restarted"][-1] == 1.0 and f["health_memory_restarts"] == 1.0, f
    # Not started empty: the snapshot of step 3 was loaded and steps 4-6 added to it.
    assert f["memory_steps_done"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], f
    assert f["loaded_snapshot"].endswith("memory_lost/run/checkpoints/step_3/memory") and f["moved_node"], f


def test_memory_restarts_from_its_snapshot_on_a_remote_filesystem(outcomes):
    # trainer.checkpoint_uri=ftp:///... (served on this machine, reached through fsspec by its
    # URI only, as s3:// is): the memory on its new node downloads the step-3 snapshot.
    o = outcomes["memory_uri"]
    assert (o["error"], o["steps_completed"]) == ("", 6), o
    _exactly_once(o)
    f = o["facts"]
    assert f["loaded_snapshot"] == "ftp:///memory_uri/run/checkpoints/step_3/memory" and f["moved_node"], f
    assert f["memory_steps_done"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], f


def test_memory_restart_without_its_snapshot_fails_saying_so(outcomes):
    o = outcomes["memory_unreachable"]
    assert o["steps_completed"] == 3 and o["exit_code"] == 1, o
    assert "the memory service cannot restart" in o["error"], o
    assert "step_3/memory is not there" in o["error"] and "it does not start empty" in o["error"], o
    _exactly_once(o)  # up to the last step it committed


def test_learner_node_lost_names_rank_and_node_and_resumes_elsewhere(outcomes):
    o = outcomes["learner_lost"]
    f = o["facts"]
    assert o["exit_code"] == 1 and "learner rank 0 on node" in o["error"], o
    assert f"(id {f['first_learner_node']})" in o["error"], o
    assert f["checkpoint_step"] == f["stopped_after_step"] == 2, f
    assert f["resumed_error"] == "" and f["logged_steps"] == [1, 2, 3, 4, 5, 6], f
    assert f["resumed_learner_node"] != f["first_learner_node"], f  # across nodes
    _exactly_once(o)


def test_learner_node_drain_checkpoints_exits_for_restart_and_resumes(outcomes):
    o = outcomes["learner_drain"]
    f = o["facts"]
    assert o["exit_code"] == PREEMPTED_EXIT_CODE, o
    assert f["checkpoint_step"] == f["stopped_after_step"] >= o["hit_step"], f  # nothing lost
    assert f["resumed_error"] == "" and f["logged_steps"] == [1, 2, 3, 4, 5, 6], f
    assert f["resumed_learner_node"] != f["first_learner_node"], f
    assert o["work_lost_s"] < 5, o
    _exactly_once(o)
