"""memrl compare: trial planning, aggregation arithmetic, and a 2-method x 2-seed micro run."""

import json

import pytest
from trainer_configs import FAST, TINY

from memrl.compare import (
    aggregate,
    format_difference,
    format_table,
    mechanism_panels,
    metric_band,
    paired_difference,
    plan_trials,
    run_compare,
    sign_test,
)
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
    assert (r1["final_min"], r1["final_max"], r1["best_min"], r1["best_max"]) == (0.2, 0.4, 0.3, 0.5)
    assert r1["success_rate"] == 0.5 and rows["memoryr+"]["success_rate"] == 1.0
    assert rows["memoryr+"]["final_std"] == 0.0 and rows["memoryr+"]["seeds"] == 1
    table = format_table(list(rows.values()))
    assert ("| r1 | 2 | 10.0 | 30.0 ± 14.1 | 20.0–40.0 | – | 40.0 ± 14.1 | 30.0–50.0 | 1/2 (≥15%) | 6.0 "
            "| correctness_zero×1 |") in table


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
    # Sign test: 2 positive, 1 tie (left out): P(2 of 2 on one side, two-sided) = 0.5.
    assert d["sign"] == {"positive": 2, "negative": 0, "ties": 1, "p": pytest.approx(0.5)}
    assert format_difference(d) == ("memoryr+ − r1, final accuracy (paired by seed, 3 seeds): +5.0 points, "
                                    "95% CI [-7.4, +17.4]; sign test 2+ 0− 1 ties, p = 0.5")
    assert paired_difference(summaries[:5], "memoryr+", "r1", "accuracy_after") is None  # one pair


def test_exact_sign_test_p_values():
    # Two-sided binomial p with p = 1/2: 2 · P(X ≤ min(k, n − k)), capped at 1.
    assert sign_test([0.1] * 6)["p"] == pytest.approx(2 / 64)
    assert sign_test([0.1] * 5 + [-0.2])["p"] == pytest.approx(2 * 7 / 64)
    assert sign_test([0.1, -0.1, 0.0])["p"] == 1.0 and sign_test([0.0, 0.0])["p"] == 1.0


def test_metric_band_aggregates_seeds_per_step():
    band = metric_band([([0, 10, 20], [0.1, 0.3, 0.5]), ([0, 10], [0.1, 0.5])])
    assert band["steps"] == [0, 10, 20] and band["seeds"] == [2, 2, 1]
    assert band["mean"] == pytest.approx([0.1, 0.4, 0.5])
    assert band["std"] == pytest.approx([0.0, 0.1414213, 0.0], rel=1e-5)
    assert (band["min"], band["max"]) == ([0.1, 0.3, 0.5], [0.1, 0.5, 0.5])


# Final accuracy per seed 0-4 of four methods, built so the comparisons have known answers.
SYNTHETIC = {"memoryr+": [0.60, 0.55, 0.70, 0.65, 0.50], "r1": [0.40, 0.50, 0.45, 0.60, 0.20],
             "r1+random": [0.50, 0.60, 0.65, 0.55, 0.45], "memoryr": [0.60, 0.50, 0.65, 0.70, 0.45]}


def _finished_trial(run_dir, method, seed, final):
    """A run directory as a finished trial leaves it: config, evaluations at steps 0/5/10, summary."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"method: {method}\nseed: {seed}\n")
    evals = {0: 0.2, 5: (0.2 + final) / 2, 10: final}
    lines = [{"step": step, "eval/accuracy": acc} for step, acc in evals.items()]
    lines += [{"step": step, "accuracy": 0.5, "reward/total/mean": 1.0} for step in range(1, 11)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / "summary.json").write_text(json.dumps({
        "method": method, "seed": seed, "steps": 10, "accuracy_before": 0.2, "accuracy_after": final,
        "best_accuracy": final}))


def test_mechanism_panels_split_each_term_by_outcome_and_answer_style(tmp_path):
    from memrl.report.plots import plot_bands

    seed = [{"step": 1, "mechanism/worked_frac": 0.25, "mechanism/memory_exploit/correct": 0.8,
             "mechanism/memory_exploit/incorrect": 0.2, "mechanism/memory_exploit/worked": 0.6,
             "mechanism/memory_exploit/direct": 0.3, "memory/exploit_hit_rate": 0.5,
             "memory/success_values": 3},
            {"step": 2, "eval/accuracy": 0.4, "mechanism/worked_frac": 0.75}]
    r1 = [[{"step": 1, "mechanism/worked_frac": 0.1}, {"step": 2, "eval/accuracy": 0.2}]]
    panels = mechanism_panels({"memoryr+": [seed, seed], "r1": r1})
    # No run logged an explore reward: that panel is left out.
    assert list(panels) == ["evaluation accuracy (greedy, held-out)", "share of worked answers (sampled)",
                            "memoryr+: exploit reward by completion", "memoryr+: memory hit rates",
                            "memoryr+: reasonings stored"]
    assert panels["share of worked answers (sampled)"]["memoryr+"]["mean"] == [0.25, 0.75]
    assert panels["share of worked answers (sampled)"]["r1"]["mean"] == [0.1]
    exploit = panels["memoryr+: exploit reward by completion"]
    assert {split: band["mean"] for split, band in exploit.items()} == {
        "correct": [0.8], "incorrect": [0.2], "worked": [0.6], "direct": [0.3]}
    assert exploit["direct"]["seeds"] == [2]
    assert panels["memoryr+: memory hit rates"]["explore"]["steps"] == []
    assert plot_bands(panels, tmp_path / "mechanism.png", title="t").stat().st_size > 10_000


def test_compare_of_finished_trials_reports_success_differences_sign_tests_and_bands(tmp_path):
    out = tmp_path / "compare"
    methods, seeds = list(SYNTHETIC), [0, 1, 2, 3, 4]
    for trial in plan_trials(methods, seeds, out):
        _finished_trial(trial.run_dir, trial.method, trial.seed, SYNTHETIC[trial.method][trial.seed])
    result = run_compare(None, [], methods, seeds, out, target=0.5)  # nothing left to train
    saved = json.loads((out / "compare.json").read_text())
    rows = {r["method"]: r for r in saved["rows"]}
    # Success: the evaluation at step 10 (the final one) reaches 0.5, or step 5 does ((0.2+f)/2 ≥ 0.5 never).
    assert {m: (r["reached_target"], r["success_rate"]) for m, r in rows.items()} == {
        "memoryr+": (5, 1.0), "r1": (2, 0.4), "r1+random": (4, 0.8), "memoryr": (4, 0.8)}
    assert rows["r1"]["steps_to_target_mean"] == 10.0 and saved["target"] == 0.5
    assert (rows["r1"]["final_min"], rows["r1"]["final_max"]) == (0.2, 0.6)
    diffs = {(d["b"], d["key"]): d for d in saved["differences"]}
    assert set(diffs) == {(b, k) for b in ("r1", "r1+random", "memoryr") for k in ("accuracy_after", "best_accuracy")}
    vs_r1 = diffs[("r1", "accuracy_after")]  # 0.20, 0.05, 0.25, 0.05, 0.30: all positive
    assert vs_r1["mean"] == pytest.approx(0.17) and vs_r1["sign"]["p"] == pytest.approx(2 / 32)
    assert vs_r1["low"] == pytest.approx(0.17 - 2.776445 * 0.1151086 / 5 ** 0.5, abs=1e-5)
    vs_random = diffs[("r1+random", "accuracy_after")]  # 0.10, -0.05, 0.05, 0.10, 0.05: 4+ 1−
    assert vs_random["sign"] == {"positive": 4, "negative": 1, "ties": 0, "p": pytest.approx(12 / 32)}
    vs_memoryr = diffs[("memoryr", "accuracy_after")]  # 0, 0.05, 0.05, -0.05, 0.05: 3+ 1− 1 tie
    assert vs_memoryr["sign"] == {"positive": 3, "negative": 1, "ties": 1, "p": pytest.approx(10 / 16)}
    band = saved["accuracy_bands"]["r1"]
    assert band["steps"] == [0, 5, 10] and band["mean"] == pytest.approx([0.2, 0.315, 0.43])
    assert band["std"][2] == pytest.approx(0.1483240, rel=1e-6)
    assert (out / "accuracy_bands.png").stat().st_size > 10_000
    md = (out / "compare.md").read_text()
    assert "| r1 | 5 | 20.0 | 43.0 ± 14.8 | 20.0–60.0 |" in md and "2/5 (≥50%)" in md
    assert "memoryr+ − r1+random, final accuracy (paired by seed, 5 seeds): +5.0 points" in md
    assert "p = 0.375" in md and "Success: a seed whose evaluation reached the target, 50.0%" in md
    assert result["rows"] == saved["rows"]


@pytest.mark.slow
def test_three_methods_two_seeds_micro_run(ray_cluster, tmp_path):
    from memrl.metric_keys import unknown_keys
    from memrl.train.metrics import read_metrics

    overrides = [*TINY, *FAST, f"model.tiny.cache_dir={tmp_path.parent / 'tiny-cache'}",
                 "trainer.max_steps=2", "trainer.eval_every_steps=1", "memory.embedder=hash",
                 "logging.tensorboard=false"]
    out = tmp_path / "compare"
    methods = ["r1", "memoryr+", "r1+random"]
    result = run_compare(None, overrides, methods, [0, 1], out)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == set(methods) and all(r["seeds"] == 2 for r in rows.values())
    assert len(result["trials"]) == 6
    for trial in result["trials"]:
        assert trial["steps"] == 2 and trial["accuracy_after"] is not None
        assert unknown_keys(json.loads(line) for line in (out / trial["run"] / "metrics.jsonl").open()) == []
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"], default=str))
    assert {(d["b"], d["key"]) for d in saved["differences"]} == {
        (b, k) for b in ("r1", "r1+random") for k in ("accuracy_after", "best_accuracy")}
    assert all(0 < d["sign"]["p"] <= 1 for d in saved["differences"])
    assert saved["accuracy_bands"]["r1"]["steps"] == [0, 1, 2]
    assert "| memoryr+ | 2 |" in (out / "compare.md").read_text()
    assert (out / "report" / "accuracy.png").is_file() and (out / "accuracy_bands.png").is_file()
    assert (out / "mechanism.png").is_file() and "mechanism.png" in (out / "compare.md").read_text()
    # Memory rewards exist only in the memory method's runs, with their mechanism split.
    memory_trials = [t for t in result["trials"] if t["method"] == "memoryr+"]
    assert all((out / t["run"] / "memory" / "final").is_dir() for t in memory_trials)
    # Each r1+random seed draws its bonus at the scale of the Memory-R+ trial of its seed.
    for seed in (0, 1):
        partner = read_metrics(out / f"memoryr_plus_seed{seed}")
        control = read_metrics(out / f"r1_plusrandom_seed{seed}")
        config = (out / f"r1_plusrandom_seed{seed}" / "config.yaml").read_text()
        assert f"match_run: {out / f'memoryr_plus_seed{seed}'}" in config
        for mine, theirs in zip(control[1:], partner[1:]):
            assert "reward/random_bonus/mean" in mine and "reward/memory_exploit/mean" not in mine
            assert {"mechanism/worked_frac", "mechanism/random_bonus/worked"} <= set(mine)
            assert {"mechanism/worked_frac", "mechanism/memory_exploit/worked"} <= set(theirs)
            # 16 completions a step: the bonus's sample std is within a factor of 3 of the target.
            assert mine["reward/intrinsic/std"] == pytest.approx(theirs["reward/intrinsic/std"], rel=2.0, abs=1e-6)
    # A second call finds every trial finished and trains nothing.
    again = run_compare(None, overrides, methods, [0, 1], out)
    assert again["rows"] == result["rows"]
