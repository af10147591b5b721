"""The driver's step parts without Ray: phase timing, step metrics, the run summary."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from memrl.config import load_config
from memrl.errors import PhaseTimeout, RuntimeFault
from memrl.rewards.step_scores import StepScores
from memrl.run_dir import RunDir
from memrl.train.run_summary import RunSummary
from memrl.train.step_clock import StepClock
from memrl.train.step_metrics import StepWork, prompts_digest, step_metrics, weight_staleness
from memrl.types import Record


def test_clock_adds_up_phases_under_their_key_and_names_the_failing_one():
    clock = StepClock(step=4, timeout_s=7.0)
    with clock.phase("train", "reference log-probs", actor="the learners"):
        time.sleep(0.02)
    with clock.phase("train", "optimizer step", actor="the learners"):
        time.sleep(0.03)
    with clock.timed("score"):
        pass
    assert clock.durations["train"] >= 0.05 and set(clock.durations) == {"train", "score"}
    assert clock.elapsed() >= clock.durations["train"]

    from ray.exceptions import GetTimeoutError

    with pytest.raises(PhaseTimeout) as stuck, clock.phase("sync", "weight publish", actor="learner rank 0"):
        raise GetTimeoutError("no answer")
    text = str(stuck.value)
    assert "weight publish" in text and "step 4" in text and "learner rank 0" in text and "7 s" in text
    assert "sync" in clock.durations  # a failed phase still counts its time

    with pytest.raises(ValueError) as failed, clock.phase("generate", "generation"):
        raise ValueError("bad batch")
    assert "while phase 'generation', step 4" in failed.value.__notes__[0]


def _work(**overrides) -> StepWork:
    # Two groups of two completions: the first group's rewards differ, the second's do not.
    scores = StepScores(total=np.array([1.0, 0.0, 0.5, 0.5]),
                        components={"correctness": np.array([1.0, 0.0, 0.0, 0.0])},
                        weights={"correctness": 1.0}, correct=np.array([True, False, False, False]),
                        lengths=np.array([10, 64, 20, 30]), direct=np.array([False, True, True, True]),
                        memory_seconds=0.25)
    infos = [{"tokens": 60, "weight_version": 3, "generate_seconds": 2.0, "sync_seconds": 0.1},
             {"tokens": 64, "weight_version": 3, "generate_seconds": 4.0, "sync_seconds": 0.3}]
    values = dict(scores=scores, keep_groups=torch.tensor([True, False]),
                  train_stats={"kl": 0.01, "reference_seconds": 0.5, "step_time_s": 1.5, "sequence_tokens": 400.0},
                  rollout_infos=infos, durations={"generate": 4.5, "score": 1.0, "train": 2.0, "sync": 0.2},
                  step_seconds=8.0, records=[Record("a", "q", "1"), Record("b", "q", "2")],
                  max_completion_length=64)
    values.update(overrides)
    return StepWork(**values)


def test_step_metrics_follow_their_definitions():
    m = step_metrics(_work())
    assert m["reward/total/mean"] == pytest.approx(0.5)
    assert m["reward/total/std"] == pytest.approx(np.std([1, 0, .5, .5]))
    assert m["reward/correctness/mean"] == pytest.approx(0.25) and m["accuracy"] == pytest.approx(0.25)
    assert m["completion/length/mean"] == pytest.approx(31.0)
    assert m["completion/clipped_frac"] == pytest.approx(0.25)  # one completion reached 64 tokens
    assert m["grpo/zero_variance_groups_frac"] == pytest.approx(0.5)
    assert m["train/kl"] == 0.01
    # Phase times come from the clock; the workers' slowest weight load is part of the sync.
    assert (m["time/generate"], m["time/score"], m["time/train"]) == (4.5, 1.0, 2.0)
    assert m["time/sync"] == pytest.approx(0.2 + 0.3)
    assert (m["time/memory"], m["time/reference"], m["time/step"]) == (0.25, 0.5, 8.0)
    assert m["throughput/tokens_per_s"] == pytest.approx(124 / 8.0)
    assert m["throughput/train_tokens_per_s"] == pytest.approx(400.0 / (0.5 + 1.5))
    # Two workers generating in parallel, 3 s each on average: 124 tokens in 3 s of wall time.
    assert m["throughput/generate_tokens_per_s"] == pytest.approx(124 / 3.0)
    assert m["data/prompts_sha1"] == prompts_digest([Record("a", "q", "1"), Record("b", "q", "2")])
    assert m["data/prompts_sha1"] != prompts_digest([Record("b", "q", "2"), Record("a", "q", "1")])


def test_mechanism_metrics_split_the_intrinsic_terms_by_outcome_and_style():
    # Completions: correct worked, wrong direct, wrong direct, wrong worked.
    scores = StepScores(total=np.zeros(4), weights={"correctness": 1.0, "memory_exploit": 0.5, "memory_explore": 2.0},
                        components={"correctness": np.array([1.0, 0.0, 0.0, 0.0]),
                                    "memory_exploit": np.array([0.8, 0.2, 0.4, 0.6]),
                                    "memory_explore": np.array([0.0, 1.0, 0.5, 0.5])},
                        correct=np.array([True, False, False, False]), lengths=np.array([10, 10, 10, 10]),
                        direct=np.array([False, True, True, False]))
    m = step_metrics(_work(scores=scores))
    assert m["mechanism/worked_frac"] == 0.5
    assert m["mechanism/memory_exploit/correct"] == pytest.approx(0.8)
    assert m["mechanism/memory_exploit/incorrect"] == pytest.approx(0.4)  # (0.2 + 0.4 + 0.6) / 3
    assert m["mechanism/memory_exploit/worked"] == pytest.approx(0.7)
    assert m["mechanism/memory_exploit/direct"] == pytest.approx(0.3)
    assert m["mechanism/memory_explore/direct"] == pytest.approx(0.75)
    # The intrinsic part, weights included: 0.5·exploit + 2·explore = 0.4, 2.1, 1.2, 1.3.
    assert m["reward/intrinsic/mean"] == pytest.approx(1.25)
    assert m["reward/intrinsic/std"] == pytest.approx(np.std([0.4, 2.1, 1.2, 1.3]))
    # A split without completions is left out; a run without intrinsic terms logs only the share.
    all_correct = dataclasses.replace(scores, correct=np.ones(4, dtype=bool))
    assert "mechanism/memory_exploit/incorrect" not in step_metrics(_work(scores=all_correct))
    plain = step_metrics(_work())
    assert not any(key.startswith(("mechanism/memory", "mechanism/random", "reward/intrinsic")) for key in plain)
    assert 0.0 <= plain["mechanism/worked_frac"] <= 1.0


def test_a_phase_that_did_not_run_logs_zero_time():
    m = step_metrics(_work(durations={"generate": 1.0}))
    assert (m["time/score"], m["time/train"]) == (0.0, 0.0)


def test_staleness_counts_versions_behind_the_replaced_weights():
    infos = [{"weight_version": 4}, {"weight_version": 3}]
    assert weight_staleness(5, infos, step=5, max_staleness=1) == 1  # version 5 trained on a sample of 3
    assert weight_staleness(4, infos, step=4, max_staleness=0) == 0
    with pytest.raises(RuntimeFault, match="step 6 trained on weights 2 versions old, over rollout.max_staleness = 1"):
        weight_staleness(6, infos, step=6, max_staleness=1)


def _summary(tmp_path, resumed_at=None, exported=None):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    return RunSummary(cfg, RunDir(tmp_path), resumed_at=resumed_at,
                      export_best=lambda folder: exported.append(folder) if exported is not None else None)


def test_summary_keeps_the_best_model_and_survives_a_resume(tmp_path):
    exported = []
    summary = _summary(tmp_path, exported=exported)
    assert not summary.has_before
    summary.record_before({"accuracy": 0.2, "accuracy_lenient": 0.25})
    summary.record_eval(10, {"accuracy": 0.5, "accuracy_lenient": 0.5})
    summary.record_eval(20, {"accuracy": 0.4, "accuracy_lenient": 0.45})  # worse: best stays
    assert exported == [tmp_path / "best_model"]
    partial = json.loads((tmp_path / "summary_partial.json").read_text())
    assert (partial["best_accuracy"], partial["best_step"]) == (0.5, 10)

    resumed = _summary(tmp_path, resumed_at=20, exported=exported)
    assert resumed.has_before and resumed.values["resumed_from_step"] == 20
    assert resumed.values["accuracy_lenient_before"] == 0.25
    result = resumed.finish(steps=30, wall_seconds=1.0, accuracy_after=0.45, starting_model="/base")
    assert result["best_model_dir"] == str(tmp_path / "best_model") and result["accuracy_after"] == 0.45
    assert json.loads((tmp_path / "summary.json").read_text()) == result


def test_summary_names_the_starting_model_when_no_step_beat_it(tmp_path):
    summary = _summary(tmp_path, exported=[])
    summary.record_before({"accuracy": 0.6, "accuracy_lenient": 0.6})
    summary.record_eval(5, {"accuracy": 0.6, "accuracy_lenient": 0.6})  # a tie is not better
    result = summary.finish(steps=5, wall_seconds=1.0, accuracy_after=0.6, starting_model="/base")
    assert result["best_step"] == 0 and result["best_model_dir"] == "/base"


def test_summary_without_evaluation_has_no_accuracy(tmp_path):
    result = _summary(tmp_path).finish(steps=3, wall_seconds=1.0, accuracy_after=None, starting_model="/base")
    assert "accuracy_after" not in result and "best_model_dir" not in result


def test_a_request_waiting_in_the_queue_is_sent_with_the_weights_newest_at_its_dispatch():
    # Async mode: the next step's requests are launched while this step trains; one that finds
    # no free worker waits, and must not leave with the launch's older weights.
    from types import SimpleNamespace

    from memrl.ledger import PromptId
    from memrl.train.data_stream import PromptStream
    from memrl.train.loop import Trainer

    class Pool:
        def __len__(self) -> int:
            return 2

        def start(self, requests, submit):
            self.requests, self.submit = requests, submit
            return "pending"

    sent = []
    actor = SimpleNamespace(generate=SimpleNamespace(remote=lambda *args: sent.append(args[3])))
    data = [Record(str(i), f"q{i}", str(i)) for i in range(4)]
    driver = SimpleNamespace(cfg=load_config(None, ["grpo.num_generations=2", "grpo.batch_size=4"]),
                             stream=PromptStream(data, seed=0), pool=Pool(), weights=(3, "ref-3"),
                             render=lambda record: record.question)
    launched = Trainer._launch(driver, 5)  # type: ignore[arg-type]
    driver.pool.submit(actor, driver.pool.requests[0])  # a worker was free
    driver.weights = (4, "ref-4")  # the step in training publishes the next version
    driver.pool.submit(actor, driver.pool.requests[1])  # dispatched from the queue afterwards
    assert sent == [(3, "ref-3"), (4, "ref-4")]
    assert [p.id for p in launched.prompts] == [r.id for r in launched.records]
    assert all(isinstance(p, PromptId) and p.epoch == 0 for p in launched.prompts)


def test_run_state_metrics_read_the_pool_and_the_memory():
    from types import SimpleNamespace

    from memrl.cluster.capacity import ClusterState
    from memrl.train.step_metrics import run_state_metrics

    class Pool:
        events = SimpleNamespace(failures=2, redispatched=1, draining_nodes_seen=1, preempted_workers=1,
                                 resent_groups=3, lost_work_s=1.23456)

        def __len__(self):
            return 3  # asked for

        def num_running(self):
            return 2

        def cluster(self):
            return ClusterState(draining={"n1": 10.0})

    m = run_state_metrics(Pool(), consumed_prompts=16, version=4, publish_seconds=0.5, staleness=1,
                          memory_restarts=1, memory={"success_values": 8})
    assert (m["rollout/num_workers"], m["rollout/num_workers_requested"], m["rollout/draining_nodes"]) == (2, 3, 1)
    assert m["rollout/lost_work_s"] == 1.235 and m["rollout/resent_groups"] == 3
    assert (m["weights/version"], m["weights/staleness"], m["data/consumed_prompts"]) == (4, 1.0, 16)
    assert m["health/memory_restarts"] == 1 and m["memory/success_values"] == 8
