"""memrl report on two synthetic 30-step runs: one R1 run whose completions shrink (length
collapse planted at steps 21-30, no memory keys) and one healthy Memory-R+ run."""

import json

import matplotlib.image
import pytest
import yaml

from memrl.report.cli import main_report
from memrl.report.configs import shorten_config
from memrl.report.plots import moving_average
from memrl.report.runs import RunDirError
from memrl.report.summary import summarise_run
from memrl.report.write import write_report
from memrl.train.metrics import MetricsWriter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOPICS = ("accuracy", "rewards", "length", "kl", "memory", "time", "throughput")


def _config(method, seed, out):
    return {"method": method, "seed": seed, "output_dir": str(out),
            "model": {"name_or_path": "tiny", "tiny": {"hidden_size": 128}},
            "task": {"name": "arith", "train_size": None, "arith": {"max_value": 50},
                     "countdown": {"max_number": 100}},
            "grpo": {"num_generations": 8, "max_completion_length": 64, "beta": 0.04},
            "rollout": {"num_workers": 2, "num_cpus_per_worker": 1.0},
            "memory": {"k": 1, "window": 100}, "logging": {"tensorboard": False}}


def _make_run(root, name, method, seed, *, shrink, memory, evals, summary):
    """30 training steps; ``evals``: {step: num_correct of 16}."""
    run_dir = root / name
    writer = MetricsWriter(run_dir, tensorboard=False)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_config(method, seed, run_dir)))

    def log_eval(step):
        writer.log(step, {"eval/accuracy": evals[step] / 16, "eval/num_correct": evals[step],
                          "eval/num_total": 16, "eval/mean_length": 30.0})

    log_eval(0)
    for s in range(1, 31):
        if shrink:
            correctness, xml, length = 0.1, 0.2, (40.0 if s <= 20 else 8.0)
        else:
            correctness, xml, length = 0.1 + 0.01 * s, 0.2 + 0.005 * s, 30.0 + s
        rewards = {"correctness": correctness, "xmlcount": xml, "integer": 0.3}
        if memory:
            rewards.update(memory_exploit=0.5, memory_explore=0.0 if s < 10 else 0.3)
        metrics = {f"reward/{k}/mean": v for k, v in rewards.items()}
        metrics.update({f"reward/{k}/std": 0.1 for k in rewards})
        metrics.update({
            "reward/total/mean": sum(rewards.values()), "accuracy": correctness,
            "completion/length/mean": length, "completion/clipped_frac": 0.02,
            "train/kl": 0.001 * s, "time/generate": 2.0, "time/score": 1.0, "time/train": 3.0,
            "time/step": 6.5, "throughput/tokens_per_s": 300.0 + s,
        })
        if memory:  # the healthy run's engines drift at steps 12-13 and 20 (bound 0.05)
            metrics["train/behaviour_logprob_gap"] = {12: 0.08, 13: 0.2, 20: 0.06}.get(s, 0.01)
            metrics.update({"memory/success_keys": s, "memory/failure_keys": 2 * s,
                            "memory/success_values": 8 * s, "memory/failure_values": 16 * s,
                            "memory/exploit_mean": 0.4, "memory/explore_mean": 0.2})
        writer.log(s, metrics)
        if s in evals:
            log_eval(s)
    writer.close()
    (run_dir / "summary.json").write_text(json.dumps(
        {"method": method, "seed": seed, "model": "tiny", "steps": 30, **summary}))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    collapsed = _make_run(root, "r1-collapse", "r1", 0, shrink=True, memory=False,
                          evals={0: 4, 30: 2},
                          summary={"accuracy_before": 0.25, "accuracy_after": 0.125,
                                   "wall_seconds": 95.4})
    healthy = _make_run(root, "memplus-healthy", "memoryr+", 1, shrink=False, memory=True,
                        evals={0: 4, 15: 7, 30: 6},
                        summary={"accuracy_before": 0.25, "accuracy_after": 0.375,
                                 "wall_seconds": 3725.0})
    return collapsed, healthy


@pytest.fixture(scope="module")
def both_report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(list(runs), out)


def test_report_draws_every_topic_as_a_valid_png(both_report):
    assert both_report.name == "report.md"
    for topic in TOPICS:
        png = both_report.parent / f"{topic}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, topic
        height, width, channels = matplotlib.image.imread(png).shape
        assert height >= 300 and width >= 700 and channels in (3, 4), topic


def test_report_headline_table_has_both_runs_and_their_numbers(both_report):
    text = both_report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| r1-collapse")
            or line.startswith("| memplus-healthy")]
    assert rows == [
        "| r1-collapse | r1 | 0 | tiny | 30 | 0:01:35 | 0.250 → 0.125 | 0.250 (step 0) | 0.600 | "
        "length collapse (shortening) (steps 21-30) |",
        # final reward: mean over steps 21-30 of (0.1 + 0.01 s) + (0.2 + 0.005 s) + 0.3 + 0.5 + 0.3
        # = 1.4 + 0.015 * 25.5 = 1.7825;
        # best evaluation 7/16 = 0.4375 at step 15.
        "| memplus-healthy | memoryr+ | 1 | tiny | 30 | 1:02:05 | 0.250 → 0.375 | "
        "0.438 (step 15) | 1.783 | none |",
    ]


def test_report_names_the_planted_collapse_with_its_numbers(both_report):
    text = both_report.read_text()
    collapsed = text.split("### r1-collapse")[1].split("###")[0]
    assert ("FIRED — length collapse (shortening), steps 21-30: mean completion length "
            "8.0 tokens < 20") in collapsed
    assert ("- length collapse (shortening): mean completion length over the last 10 steps "
            "< 20 tokens") in text
    healthy = text.split("### memplus-healthy")[1].split("###")[0]
    assert "- no rule fired" in healthy


def test_report_marks_the_steps_over_the_drift_bound(both_report, runs):
    text = both_report.read_text()
    section = text.split("## Trainer/engine drift")[1].split("## Plots")[0]
    assert "- r1-collapse: not logged" in section
    assert "- memplus-healthy: DRIFT at steps 12-13, 20, over 0.05 (highest 0.2000 at step 13)" in section
    assert summarise_run(runs[1])["drift"] == {"bound": 0.05, "steps": [12, 13, 20], "highest": 0.2,
                                               "highest_step": 13}


def test_report_embeds_plots_notes_runs_missing_from_them_and_shortens_configs(both_report):
    text = both_report.read_text()
    for topic in TOPICS:
        assert f"![{topic}]({topic}.png)" in text
    memory = text.split("### memory.png")[1].split("###")[0]
    assert "Not in this plot (they log none of its keys): r1-collapse." in memory
    differing = text.split("### Settings that differ between runs")[1].split("###")[0]
    assert '| method | "r1" | "memoryr+" |' in differing
    assert '| seed | 0 | 1 |' in differing
    config = text.split("### r1-collapse")[-1].split("### memplus-healthy")[0]
    assert "memory:" not in config and "output_dir" not in config  # r1 has no memory
    assert "num_cpus_per_worker" not in config and "countdown" not in config


def test_run_without_memory_keys_gets_no_memory_plot_and_a_note(runs, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "memory.png").write_bytes(PNG_MAGIC)  # left by an earlier report
    report = write_report([runs[0]], tmp_path / "out", fmt="html", smoothing=5)
    assert report.name == "report.html"
    assert not (tmp_path / "out" / "memory.png").exists()
    assert (tmp_path / "out" / "length.png").read_bytes()[:8] == PNG_MAGIC
    text = report.read_text()
    assert "memory.png not drawn: no run logs memory/* or reward/memory_* keys" in text
    assert '<img src="accuracy.png" alt="accuracy">' in text
    assert "<td>0.250 → 0.125</td>" in text
    assert "moving average over 5 steps" in text


def test_summarise_run_headline_numbers(runs):
    summary = summarise_run(runs[1])
    assert summary["run"] == "memplus-healthy"
    assert (summary["method"], summary["seed"], summary["steps"]) == ("memoryr+", 1, 30)
    assert summary["best_accuracy"] == 0.4375 and summary["best_step"] == 15
    assert summary["final_reward"] == pytest.approx(1.7825)
    assert summary["final_train_accuracy"] == pytest.approx(0.1 + 0.01 * 25.5)
    assert summary["collapse"] == [] and summary["collapse_skipped"] == {}
    [finding] = summarise_run(runs[0])["collapse"]
    assert finding["rule"] == "length_shortening"
    assert finding["values"] == {"mean_length": 8.0}
    json.dumps(finding)  # plain data, reusable by memrl compare


def test_summarise_run_without_summary_json_reads_eval_lines_and_config(tmp_path):
    lines = [{"step": 0, "eval/accuracy": 0.5}, {"step": 1, "accuracy": 0.25},
             {"step": 2, "accuracy": 0.75, "reward/total/mean": 1.5},
             {"step": 2, "eval/accuracy": 0.625}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "config.yaml").write_text("method: cosine\nseed: 7\n")
    summary = summarise_run(tmp_path)
    assert (summary["method"], summary["seed"], summary["steps"]) == ("cosine", 7, 2)
    assert (summary["accuracy_before"], summary["accuracy_after"]) == (0.5, 0.625)
    assert (summary["best_accuracy"], summary["best_step"]) == (0.625, 2)
    assert summary["final_reward"] == 1.5 and summary["final_train_accuracy"] == 0.5
    assert summary["wall_seconds"] is None and summary["collapse"] == []
    assert set(summary["collapse_skipped"]) == {"length_shortening", "length_lengthening",
                                                "reward_mode", "correctness_zero"}


def test_main_report_defaults_to_first_run_report_dir(tmp_path, capsys):
    # Only accuracy is logged, so only accuracy.png is drawn.
    lines = [{"step": 0, "eval/accuracy": 0.5}, {"step": 1, "accuracy": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main_report([str(tmp_path)], None, "md") == 0
    report = tmp_path / "report" / "report.md"
    assert capsys.readouterr().out.strip() == str(report)
    assert sorted(p.name for p in report.parent.iterdir()) == ["accuracy.png", "report.md"]
    assert "kl.png not drawn: no run logs train/kl" in report.read_text()


def test_main_report_names_a_bad_run_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main_report([str(tmp_path / "empty")], str(tmp_path / "out"), "md") == 2
    assert f"{tmp_path / 'empty'} has no metrics.jsonl" in capsys.readouterr().err
    with pytest.raises(RunDirError, match="missing-run does not exist"):
        write_report([tmp_path / "missing-run"], tmp_path / "out")


def test_bad_metrics_line_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "accuracy": 0.5}\n{oops\n')
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: not a JSON line"):
        summarise_run(tmp_path)


def test_moving_average_is_trailing():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([3.0, 6.0, 9.0], 5).tolist() == [3.0, 4.5, 6.0]
    with pytest.raises(ValueError, match="smoothing"):
        moving_average([1.0], 0)


def test_shorten_config_keeps_memory_only_for_memory_methods():
    config = _config("memoryr+", 3, "/tmp/x")
    short = shorten_config(config)
    assert short["memory"] == {"k": 1, "window": 100}
    assert short["task"] == {"name": "arith", "arith": {"max_value": 50}}
    assert short["rollout"] == {"num_workers": 2}
    assert "output_dir" not in short and "logging" not in short
    assert "memory" not in shorten_config({**config, "method": "cosine"})
    assert "memory" in shorten_config({**config, "method": "explore"})
    bonus = {**config, "random_bonus": {"mean": 0.0, "std": 0.2}}
    assert "random_bonus" not in shorten_config(bonus)  # memoryr+ does not read it
    assert shorten_config({**bonus, "method": "r1+random"})["random_bonus"] == {"mean": 0.0, "std": 0.2}
    hub = shorten_config({**config, "model": {"name_or_path": "Qwen/x", "tiny": {"a": 1}}})
    assert hub["model"] == {"name_or_path": "Qwen/x"}
