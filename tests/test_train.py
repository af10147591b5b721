"""The distributed trainer on a local Ray cluster: rollout workers, memory service, learner."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_configs import assert_audit_clean, make_config

from memrl.metric_keys import unknown_keys
from memrl.train.loop import Trainer
from memrl.train.metrics import read_metrics

pytestmark = pytest.mark.slow

EXPECTED_METRICS = [
    "reward/total/mean", "reward/total/std", "reward/correctness/mean", "reward/xmlcount/mean",
    "reward/memory_exploit/mean", "reward/memory_explore/mean", "accuracy",
    "completion/length/mean", "memory/success_values", "memory/failure_values",
    "memory/latency_p50_ms", "memory/latency_p99_ms", "train/kl", "train/clip_frac",
    "train/grad_norm", "train/lr", "time/generate", "time/score", "time/reference", "time/train",
    "time/sync", "throughput/tokens_per_s", "weights/version",
]


def test_grpo_steps_update_weights_workers_and_memory(ray_cluster, tmp_path):
    # λ ≠ 1, so a memory weight applied twice or not at all shows in the logged total.
    cfg = make_config(tmp_path, "trainer.max_steps=3", "method=memoryr+",
                      "memory.lambda_exploit=0.5", "memory.lambda_explore=2.0")
    trainer = Trainer(cfg)
    try:
        summary = trainer.run()
        pings = [ray_cluster.get(w.ping.remote(), timeout=60) for w in trainer.pool.workers.values()]
    finally:
        trainer.close()
    run = Path(cfg.output_dir)
    assert summary["steps"] == 3
    assert {"accuracy_before", "accuracy_after", "wall_seconds"} <= set(summary)
    assert json.loads((run / "summary.json").read_text())["steps"] == 3

    # The trained weights differ from the starting model; workers hold the newest version.
    start = load_file(str(Path(trainer.model_path) / "model.safetensors"))
    final = load_file(str(run / "model" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)
    assert [p["weight_version"] for p in pings] == [3, 3]

    steps = [m for m in read_metrics(run) if "reward/total/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    evals = [m for m in read_metrics(run) if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [0, 3]
    for m in evals:  # shares of the 8 held-out completions
        assert m["eval/num_total"] == 8 and m["eval/num_correct"] == 8 * m["eval/accuracy"]
        assert (8 * m["eval/answer_tag_rate"]).is_integer()
    for key in EXPECTED_METRICS:
        assert all(key in m for m in steps), key
    # Every key the run logged has a description (docs/run-directory.md is generated from them).
    unknown = unknown_keys(read_metrics(run))
    assert not unknown, f"logged but not in memrl/metric_keys.py: {unknown}"
    # Every completion lands in one of the two memories: they grow by a batch per step.
    stored = [m["memory/success_values"] + m["memory/failure_values"] for m in steps]
    assert stored == [16.0, 32.0, 48.0]
    assert [m["weights/version"] for m in steps] == [1, 2, 3]
    # The logged total is R = Σᵢ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore of the logged terms
    # (rule weights 1, λ from the config).
    weights = {"memory_exploit": 0.5, "memory_explore": 2.0}
    for m in steps:
        terms = [k[len("reward/"):-len("/mean")] for k in m
                 if k.startswith("reward/") and k.endswith("/mean")
                 and k not in ("reward/total/mean", "reward/intrinsic/mean")]  # sums of the terms
        assert {"correctness", "memory_exploit", "memory_explore"} <= set(terms)
        want = sum(weights.get(t, 1.0) * m[f"reward/{t}/mean"] for t in terms)
        assert m["reward/total/mean"] == pytest.approx(want, abs=1e-9)
    assert any(m["reward/memory_explore/mean"] != 0.0 for m in steps)
    assert (run / "memory").is_dir() and any((run / "tensorboard").iterdir())

    # The prompt ledger: per step the learners' own counts, each prompt trained whole on the
    # weights of the step before (zero-variance filtering is off here).
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert [line["step"] for line in ledger] == [1, 2, 3]
    for line in ledger:
        assert [(p["received"], p["trained"], p["filtered"], p["versions"]) for p in line["prompts"]] == \
            [(4, 4, False, [line["step"] - 1] * 4)] * 4
    assert_audit_clean(run, 3)
