"""memrl plan: placement on a live Ray cluster and on given nodes, reachability, exit codes."""

from __future__ import annotations

import pytest

from memrl.cli import main
from memrl.cluster.placement import Node
from memrl.config import load_config
from memrl.plan import ActorGroup, build_plan, learner_bytes, place


def test_plan_passes_the_default_on_the_session_cluster(ray_cluster, tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}"])
    plan = build_plan(cfg)
    assert plan.first_problem is None, plan.table()
    assert [g.name for g in plan.groups] == ["rollout", "learner", "memory"]
    assert "all 3 actors fit" in plan.table()  # one rollout worker, the learner, the memory
    assert not (tmp_path / "run").exists()  # the writability probe leaves nothing behind


def test_plan_refuses_gpus_and_unknown_custom_resources_on_the_session_cluster(ray_cluster, tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "rollout.num_gpus_per_worker=1"])
    problem = build_plan(cfg).first_problem
    assert problem.name == "placement" and "rollout actor 1/1" in problem.detail and "GPU" in problem.detail
    cfg = load_config(None, [f"output_dir={tmp_path}", "learner.resources={spot_node: 1}"])
    problem = build_plan(cfg).first_problem
    assert problem.name == "placement" and "'spot_node'" in problem.detail


def test_plan_places_custom_resources_the_session_cluster_has(ray_cluster, tmp_path):
    """The session node advertises rollout_node: 2 (tests/conftest.py): two workers asking
    0.5 each fit; two asking 1.5 each (3 in all) cannot be placed, and the plan says which."""
    two = [f"output_dir={tmp_path}", "rollout.num_workers=2"]
    cfg = load_config(None, [*two, "rollout.resources={rollout_node: 0.5}"])
    assert build_plan(cfg).first_problem is None
    cfg = load_config(None, [*two, "rollout.resources={rollout_node: 1.5}"])
    problem = build_plan(cfg).first_problem
    assert problem.name == "placement" and "rollout actor 2/2" in problem.detail
    assert "rollout_node" in problem.detail


def test_fractional_gpus_pack_on_one_device_but_not_beyond():
    one_gpu = lambda: [Node("n", {"CPU": 16.0, "GPU": 1.0, "rollout_node": 1.0}, [1.0])]  # noqa: E731
    fits = [ActorGroup("rollout", 1, {"CPU": 1, "GPU": 0.4, "rollout_node": 0.5}),
            ActorGroup("learner", 1, {"CPU": 1, "GPU": 0.5}), ActorGroup("memory", 1, {"CPU": 1, "GPU": 0.1})]
    assert place(fits, one_gpu()) is None
    too_much = fits + [ActorGroup("memory", 1, {"CPU": 1, "GPU": 0.1})]
    assert "GPU 0.1 wanted on one device, largest free share" in place(too_much, one_gpu())
    # two 0.6 shares need two devices: one node with two GPUs holds them, one with one does not
    pair = [ActorGroup("rollout", 2, {"CPU": 1, "GPU": 0.6})]
    assert place(pair, [Node("n", {"CPU": 4.0, "GPU": 2.0}, [1.0, 1.0])]) is None
    assert "rollout actor 2/2" in place(pair, one_gpu())
    custom = [ActorGroup("rollout", 3, {"CPU": 1, "rollout_node": 0.5})]
    assert "rollout_node 0.5 wanted, 0 left" in place(custom, one_gpu())


def test_learner_memory_follows_the_zero_stage():
    p = 500_000_000
    assert learner_bytes(p, 0, 1, bf16=True, reference=False) == 16 * p
    assert learner_bytes(p, 2, 4, bf16=True, reference=False) == int(p * (2 + 2 / 4 + 12 / 4))
    assert learner_bytes(p, 3, 4, bf16=True, reference=True) == int(p * (16 / 4 + 2))


def test_cli_plan_exits_2_naming_an_unreachable_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["plan", f"output_dir={tmp_path}", "model.name_or_path=memrl-tests/no-such-model"])
    err = capsys.readouterr().err
    assert code == 2
    assert "model" in err and "memrl-tests/no-such-model" in err and "hf download" in err


def test_config_refuses_two_learners_on_fractional_gpus():
    from memrl.config import ConfigError

    with pytest.raises(ConfigError, match="NCCL cannot run two ranks on one GPU"):
        load_config(None, ["learner.num_learners=2", "learner.num_gpus=0.5"])
