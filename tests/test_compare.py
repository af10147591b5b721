"""memrl compare: trial planning, aggregation arithmetic, and a 2-method x 2-seed micro run."""

import json

import pytest
from trainer_configs import FAST, TINY

from memrl.compare import aggregate, format_table, plan_trials, run_compare
from memrl.config import ConfigError


def test_plan_trials_names_and_errors(tmp_path):
    trials = plan_trials(["r1", "memoryr+"], [0, 1], tmp_path)
    assert [(t.method, t.seed, t.run_dir.name) for t in trials] == [
        ("r1", 0, "r1_seed0"), ("r1", 1, "r1_seed1"),
        ("memoryr+", 0, "memoryr_plus_seed0"), ("memoryr+", 1, "memoryr_plus_seed1")]
    with pytest.raises(ConfigError, match="unknown \\['ppo'\\]"):
        plan_trials(["ppo"], [0], tmp_path)
    with pytest.raises(ConfigError, match="repeat"):
        plan_trials(["r1"], [0, 0], tmp_path)


def test_aggregate_means_stds_targets_and_collapse():
    summaries = [
        {"method": "r1", "accuracy_before": 0.1, "accuracy_after": 0.2, "best_accuracy": 0.3,
         "steps_to_target": None, "collapse": [{"rule": "correctness_zero"}]},
        {"method": "r1", "accuracy_before": 0.1, "accuracy_after": 0.4, "best_accuracy": 0.5,
         "steps_to_target": 6, "collapse": []},
        {"method": "memoryr+", "accuracy_before": 0.1, "accuracy_after": 0.5, "best_accuracy": 0.5,
         "steps_to_target": 4, "collapse": []},
    ]
    rows = {r["method"]: r for r in aggregate(summaries, target=0.15)}
    r1 = rows["r1"]
    assert r1["final_mean"] == pytest.approx(0.3) and r1["final_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert r1["best_mean"] == pytest.approx(0.4) and r1["reached_target"] == 1
    assert r1["steps_to_target_mean"] == 6 and r1["collapse"] == {"correctness_zero": 1}
    assert rows["memoryr+"]["final_std"] == 0.0 and rows["memoryr+"]["seeds"] == 1
    table = format_table(list(rows.values()))
    assert "| r1 | 2 | 10.0 | 30.0 ± 14.1 | 40.0 ± 14.1 | 1/2 (≥15%) | 6.0 | correctness_zero×1 |" in table


@pytest.mark.slow
def test_two_methods_two_seeds_micro_run(ray_cluster, tmp_path):
    overrides = [*TINY, *FAST, f"model.tiny.cache_dir={tmp_path.parent / 'tiny-cache'}",
                 "trainer.max_steps=2", "trainer.eval_every_steps=1", "memory.embedder=hash",
                 "logging.tensorboard=false"]
    out = tmp_path / "compare"
    result = run_compare(None, overrides, ["r1", "memoryr+"], [0, 1], out)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"r1", "memoryr+"} and all(r["seeds"] == 2 for r in rows.values())
    assert len(result["trials"]) == 4
    for trial in result["trials"]:
        assert trial["steps"] == 2 and trial["accuracy_after"] is not None
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert "| memoryr+ | 2 |" in (out / "compare.md").read_text()
    assert (out / "report" / "accuracy.png").is_file()
    # Memory rewards exist only in the memory method's runs.
    memory_trials = [t for t in result["trials"] if t["method"] == "memoryr+"]
    assert all((out / t["run"] / "memory" / "final").is_dir() for t in memory_trials)
    # A second call finds every trial finished and trains nothing.
    again = run_compare(None, overrides, ["r1", "memoryr+"], [0, 1], out)
    assert again["rows"] == result["rows"]
