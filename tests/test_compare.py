"""memrl compare: trial planning, aggregation arithmetic, and a 2-method x 2-seed micro run."""

import json

import pytest
from trainer_configs import FAST, TINY

from memrl.compare import aggregate, format_difference, format_table, paired_difference, plan_trials, run_compare
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
    assert "| r1 | 2 | 10.0 | 30.0 ± 14.1 | – | 40.0 ± 14.1 | 1/2 (≥15%) | 6.0 | correctness_zero×1 |" in table


def test_paired_difference_with_a_t_interval():
    rows = [("r1", 0, 0.30), ("r1", 1, 0.40), ("r1", 2, 0.35), ("r1", 3, 0.50),
            ("memoryr+", 0, 0.35), ("memoryr+", 1, 0.40), ("memoryr+", 2, 0.45)]
    summaries = [{"method": m, "seed": seed, "accuracy_after": acc} for m, seed, acc in rows]
    d = paired_difference(summaries, "memoryr+", "r1", "accuracy_after")
    # Seed 3 ran only for r1: three pairs, differences 0.05, 0.00, 0.10 (mean 0.05, sd 0.05);
    # t(0.975, 2) = 4.3027, so the half-width is 4.3027 * 0.05 / sqrt(3) = 0.1242.
    assert d["seeds"] == 3 and d["differences"] == pytest.approx([0.05, 0.0, 0.1])
    assert d["mean"] == pytest.approx(0.05)
    assert (d["low"], d["high"]) == pytest.approx((0.05 - 0.12421, 0.05 + 0.12421), abs=1e-4)
    assert format_difference(d) == ("memoryr+ − r1, final accuracy (paired by seed, 3 seeds): +5.0 points, "
                                    "95% CI [-7.4, +17.4]")
    assert paired_difference(summaries[:5], "memoryr+", "r1", "accuracy_after") is None  # one pair


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
