"""The prompt ledger and ``memrl audit`` without Ray: the learners' per-group counts, the ledger
line, its writer cut back on resume, the audit of hand-broken ledgers (each fault reported with
its first step, a clean one clean), the command's exit codes, and the drift alarm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memrl.audit import AuditResult, audit_ledger, audit_run, format_audit
from memrl.cli import main
from memrl.config import config_to_yaml, load_config
from memrl.learner.step import completion_versions, trained_groups
from memrl.ledger import LedgerError, LedgerWriter, PromptId, TrainedGroup, ledger_line, merge_trained, read_ledger
from memrl.run_dir import RunDir
from memrl.tasks import build_task
from memrl.train.data_stream import PromptStream
from memrl.train.drift_alarm import DriftAlarm, group_workers, worker_gaps
from memrl.types import Record, RolloutBatch

G = 4  # completions per prompt
P = 3  # prompts per step


def schedule(steps: int) -> list[list[PromptId]]:
    """Step s schedules prompts (s-1)*P .. s*P-1 of a 5-record split (epoch rolls over)."""
    data = [Record(id=f"r{i}", question=f"q{i}", answer=str(i)) for i in range(5)]
    stream = PromptStream(data, seed=0)
    return [[p for _, p in stream.take(P)] for _ in range(steps)]


def line(step: int, prompts: list[PromptId], *, lag: int = 0) -> dict:
    """What a healthy run writes for ``prompts`` at ``step``: all completions trained."""
    trained = {g: TrainedGroup(p.id, G, G, [step - 1 - lag] * G) for g, p in enumerate(prompts)}
    return ledger_line(step, "toy", "train", prompts, trained, [False] * len(prompts))


def clean_ledger(plan: list[list[PromptId]], *, lag: int = 0) -> list[dict]:
    return [line(step, prompts, lag=lag) for step, prompts in enumerate(plan, start=1)]


def audit(tmp_path: Path, lines: list[dict], plan: list[list[PromptId]], *, max_lag: int = 0) -> AuditResult:
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return audit_ledger(read_ledger(path), plan, task="toy", split="train", num_generations=G, max_lag=max_lag)


def found(result: AuditResult) -> dict[str, tuple[int, int | None]]:
    """The non-zero counts, each with its first step."""
    return {kind: (n, result.first_step[kind]) for kind, n in result.counts.items() if n}


def test_a_clean_ledger_is_clean_across_an_epoch_boundary(tmp_path):
    plan = schedule(4)  # 12 prompts over a 5-record split: epochs 0, 1 and 2
    assert {p.epoch for step in plan for p in step} == {0, 1, 2}
    result = audit(tmp_path, clean_ledger(plan), plan)
    assert result.clean and found(result) == {} and (result.steps, result.scheduled) == (4, 12)
    assert "clean: every scheduled prompt trained exactly once" in format_audit(result, "run")


def test_async_lag_within_max_staleness_is_clean_and_beyond_it_stale(tmp_path):
    plan = schedule(3)
    assert audit(tmp_path, clean_ledger(plan, lag=1), plan, max_lag=1).clean
    assert found(audit(tmp_path, clean_ledger(plan, lag=1), plan, max_lag=0)) == {"stale": (3 * P, 1)}
    future = clean_ledger(plan, lag=-1)  # weights newer than the step's: a bug, not freshness
    assert found(audit(tmp_path, future, plan, max_lag=1)) == {"stale": (3 * P, 1)}


def test_a_skipped_prompt_is_lost(tmp_path):
    plan = schedule(3)
    lines = clean_ledger(plan)
    del lines[1]["prompts"][2]
    assert found(audit(tmp_path, lines, plan)) == {"lost": (1, 2)}


def test_a_step_that_never_reached_the_learners_loses_its_prompts(tmp_path):
    plan = schedule(3)
    lines = clean_ledger(plan)
    lines[2] = ledger_line(3, "toy", "train", plan[2], {}, [False] * P)
    assert found(audit(tmp_path, lines, plan)) == {"lost": (P, 3)}


def test_prompts_skipped_on_resume_are_lost_shifted_and_outside_the_schedule(tmp_path):
    # The resumed run took step 3's prompts from step 4's place (a lost data position).
    plan, further = schedule(4), schedule(5)
    lines = clean_ledger(plan[:2]) + [line(3, further[3]), line(4, further[4])]
    assert found(audit(tmp_path, lines, plan)) == {"lost": (P, 3), "out_of_order": (P, 3),
                                                   "outside_schedule": (P, 4)}


def test_a_duplicated_prompt_and_a_redone_step_not_replaced_are_reported(tmp_path):
    plan = schedule(3)
    again = line(3, plan[2] + plan[0][:1])  # step 1's first prompt trained again at step 3
    assert found(audit(tmp_path, clean_ledger(plan)[:2] + [again], plan)) == {"duplicated": (1, 3)}
    redone = clean_ledger(plan) + [line(3, plan[2])]  # step 3 twice: the first not replaced
    assert found(audit(tmp_path, redone, plan)) == {"duplicated": (P, 3)}


def test_out_of_order_prompts_and_lines_are_reported(tmp_path):
    plan = schedule(3)
    swapped = [plan[1][:1] + plan[0][1:], plan[0][:1] + plan[1][1:], plan[2]]
    lines = [line(step, prompts) for step, prompts in enumerate(swapped, start=1)]
    assert found(audit(tmp_path, lines, plan)) == {"out_of_order": (2, 1)}
    backwards = clean_ledger(plan)
    backwards[1], backwards[2] = backwards[2], backwards[1]  # step 3's line before step 2's
    assert found(audit(tmp_path, backwards, plan)) == {"out_of_order": (P, 2)}


def test_wrong_counts_are_reported_and_a_filtered_group_is_trained_by_design(tmp_path):
    plan = schedule(2)
    lines = clean_ledger(plan)
    lines[0]["prompts"][1].update(trained=G - 1, versions=[0] * (G - 1))
    lines[1]["prompts"][0].update(received=2 * G, trained=2 * G, versions=[1] * (2 * G))
    lines[1]["prompts"][2].update(filtered=True, trained=0, versions=[])  # zero variance: fine
    assert found(audit(tmp_path, lines, plan)) == {"wrong_count": (2, 1)}
    lines[1]["prompts"][2].update(filtered=False)  # received, none trained, not filtered
    assert found(audit(tmp_path, lines, plan)) == {"wrong_count": (3, 1), "lost": (1, 2)}


def test_prompts_outside_the_schedule_are_reported(tmp_path):
    plan = schedule(2)
    lines = clean_ledger(plan)
    lines[0]["prompts"].append({"id": "other", "epoch": None, "index": None, "received": G,
                                "trained": G, "filtered": False, "versions": [0] * G})
    lines[1]["task"] = "another"
    assert found(audit(tmp_path, lines, plan)) == {"outside_schedule": (1 + P, 1), "lost": (P, 2)}


def test_ledger_line_records_the_learners_counts_and_strangers():
    prompts = [PromptId("a", 0, 3), PromptId("b", 0, 1), PromptId("c", 0, 0)]
    trained = {0: TrainedGroup("a", 4, 4, [2] * 4), 1: TrainedGroup("x", 4, 4, [2] * 4)}
    line = ledger_line(3, "toy", "train", prompts, trained, [False, False, True])
    assert [(p["id"], p["index"], p["received"], p["trained"], p["filtered"]) for p in line["prompts"]] == [
        ("a", 3, 4, 4, False), ("b", 1, 0, 0, False), ("x", None, 4, 4, False), ("c", 0, 0, 0, True)]


def _batch(groups: list[int], ids: list[str], versions: list[int], lengths: list[int]) -> RolloutBatch:
    n, width = len(groups), max(lengths)
    mask = torch.tensor([[1] * k + [0] * (width - k) for k in lengths])
    return RolloutBatch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.long),
        completion_ids=torch.ones(n, width, dtype=torch.long), completion_mask=mask,
        behaviour_logprobs=torch.zeros(n, width),
        token_versions=torch.tensor([[v] * width for v in versions]), texts=[""] * n,
        group_index=groups, record_ids=ids, weight_version=max(versions))


def test_the_learners_count_what_entered_the_loss_per_group_and_merge_over_ranks():
    received = _batch([0, 0, 1, 1], ["a", "a", "b", "b"], [5, 5, 4, 4], [3, 1, 2, 2])
    kept = _batch([0, 0], ["a", "a"], [5, 5], [3, 1])  # group 1 filtered out
    groups = trained_groups(received, kept, torch.tensor([0.3, 0.1]))
    assert groups[0].received == 2 and groups[0].trained == 2 and groups[0].versions == [5, 5]
    assert groups[0].tokens == 4 and groups[0].gap_sum == pytest.approx(0.4)
    assert (groups[1].received, groups[1].trained, groups[1].versions) == (2, 0, [])
    other_rank = {2: TrainedGroup("c", 2, 2, [5, 5])}
    assert sorted(merge_trained([groups, other_rank])) == [0, 1, 2]
    # A completion's version is the oldest among its real tokens (padding does not count).
    mixed = _batch([0, 0], ["a", "a"], [7, 7], [2, 3])
    mixed.token_versions[0, 0] = 6
    mixed.token_versions[0, 2] = 3
    assert completion_versions(mixed).tolist() == [6, 7]


def test_the_ledger_writer_starts_fresh_and_is_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "ledger.jsonl"
    writer = LedgerWriter(path)
    for step in (1, 2, 3):
        writer.append({"step": step, "task": "toy", "split": "train", "prompts": []})
    writer.close()
    resumed = LedgerWriter(path, keep_lines=2, resume_step=2)  # checkpoint of step 2
    resumed.append({"step": 3, "task": "toy", "split": "train", "prompts": []})
    resumed.close()
    assert [line.step for line in read_ledger(path)] == [1, 2, 3] and resumed.lines == 3
    LedgerWriter(path, keep_lines=-1, resume_step=1).close()  # an older checkpoint: by step
    assert [line.step for line in read_ledger(path)] == [1]
    LedgerWriter(path).close()  # a fresh run in the same directory
    assert read_ledger(path) == []


def _run_dir(tmp_path: Path, steps: int) -> tuple[Path, list[dict]]:
    """A run directory with config.yaml (the default arith task) and a clean ledger."""
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}"])
    files = RunDir(cfg.output_dir)
    files.root.mkdir(parents=True)
    files.config.write_text(config_to_yaml(cfg))
    task = build_task(cfg)
    stream = PromptStream(task.dataset("train"), seed=cfg.seed)
    g = cfg.grpo.num_generations
    lines = []
    for step in range(1, steps + 1):
        prompts = [p for _, p in stream.take(cfg.grpo.prompts_per_step)]
        trained = {i: TrainedGroup(p.id, g, g, [step - 1] * g) for i, p in enumerate(prompts)}
        lines.append(ledger_line(step, task.name, "train", prompts, trained, [False] * len(prompts)))
    files.ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return files.root, lines


def test_memrl_audit_replays_the_stream_from_the_config_and_sets_the_exit_code(tmp_path, capsys):
    run, lines = _run_dir(tmp_path, 3)
    assert audit_run(run).clean and audit_run(run).scheduled == 3 * len(lines[0]["prompts"])
    assert main(["audit", str(run)]) == 0
    assert "clean" in capsys.readouterr().out
    lines[1]["prompts"].pop()
    RunDir(run).ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["audit", str(run), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["lost"] == 1 and printed["first_step"]["lost"] == 2 and not printed["clean"]


def test_memrl_audit_names_an_unreadable_file_and_line(tmp_path, capsys):
    run, _ = _run_dir(tmp_path, 2)
    with RunDir(run).ledger.open("a") as fh:
        fh.write('{"step": 3, "task": "arith", "spl\n')
    assert main(["audit", str(run)]) == 2
    assert f"{RunDir(run).ledger}:3: not a JSON line" in capsys.readouterr().err
    RunDir(run).ledger.unlink()
    with pytest.raises(LedgerError, match="ledger.jsonl does not exist"):
        audit_run(run)
    assert main(["audit", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_drift_alarm_fires_once_naming_the_step_and_the_workers():
    infos = [{"worker_id": "rollout-0", "num_completions": 8}, {"worker_id": "rollout-1", "num_completions": 4}]
    workers = group_workers(infos, num_generations=4)
    assert workers == ["rollout-0", "rollout-0", "rollout-1"]
    trained = {0: TrainedGroup("a", 4, 4, [1] * 4, gap_sum=0.2, tokens=20),
               1: TrainedGroup("b", 4, 4, [1] * 4, gap_sum=0.2, tokens=20),
               2: TrainedGroup("c", 4, 4, [1] * 4, gap_sum=4.0, tokens=20)}
    assert worker_gaps(trained, workers) == pytest.approx({"rollout-0": 0.01, "rollout-1": 0.2})
    alarm = DriftAlarm(0.05, num_generations=4)
    assert alarm.check(1, {"behaviour_logprob_gap": 0.01}, trained, infos) is None
    message = alarm.check(2, {"behaviour_logprob_gap": 0.07}, trained, infos)
    assert message is not None and message.startswith("step 2: train/behaviour_logprob_gap 0.0700")
    assert "rollout-1 0.2000, rollout-0 0.0100" in message and "over the bound: rollout-1" in message
    assert alarm.check(3, {"behaviour_logprob_gap": 0.5}, trained, infos) is None  # once
    assert DriftAlarm(0.0, 4).check(1, {"behaviour_logprob_gap": 9.0}, trained, infos) is None  # off
