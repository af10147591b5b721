"""The run directory's layout and the metric catalogue: every name described, the generated
reference current, a logged key the catalogue lacks reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from memrl import run_dir
from memrl.metric_keys import CATALOGUE, GROUPS, MetricKey, describe, unknown_keys
from memrl.run_dir import LAYOUT, RunDir, checkpoint_name, checkpoint_step
from memrl.run_dir_docs import DOCS_PATH, main, render_reference


def test_run_directory_reference_is_current():
    assert DOCS_PATH.read_text(encoding="utf-8") == render_reference(), (
        "docs/run-directory.md is stale: run `python -m memrl.run_dir_docs` and commit it")


def test_the_generator_writes_the_reference(tmp_path):
    out = tmp_path / "run-directory.md"
    assert main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()


def test_every_layout_name_is_described():
    names = {key: value for key, value in vars(run_dir).items()
             if key.isupper() and isinstance(value, str)}
    assert names, "no layout names found"
    undescribed = [key for key, value in names.items() if not any(value in e.path for e in LAYOUT)]
    assert not undescribed, f"add an Entry for {undescribed} to LAYOUT in memrl/run_dir.py"
    assert all(e.meaning.strip() for e in LAYOUT)
    assert len({e.path for e in LAYOUT}) == len(LAYOUT)


def test_every_run_dir_path_is_in_the_layout():
    root = Path("runs/x")
    paths = {e.path.rstrip("/") for e in LAYOUT}
    run = RunDir(root)
    props = [name for name, value in vars(RunDir).items() if isinstance(value, property)]
    for name in props:
        relative = getattr(run, name).relative_to(root).as_posix()
        assert relative in paths, f"RunDir.{name} ({relative}) has no Entry in LAYOUT"
    assert run.checkpoint(7) == root / "checkpoints" / "step_7"
    assert RunDir("runs/x").metrics == root / "metrics.jsonl"  # a str root works too


def test_checkpoint_names_round_trip():
    assert checkpoint_name(12) == "step_12" and checkpoint_step("step_12") == 12
    for other in ("latest", "step_", "step_3.partial-ab12-cd34", "stepX"):
        assert checkpoint_step(other) is None, other


def _described(key: str) -> MetricKey:
    entry = describe(key)
    assert entry is not None, key
    return entry


def test_the_catalogue_describes_exact_keys_and_patterns():
    assert _described("eval/accuracy_lenient").meaning
    assert _described("train/update_s").unit == "s"
    assert _described("reward/total/mean").name == "reward/total/mean"  # exact before the pattern
    assert _described("reward/correctness/std").name == "reward/{component}/std"
    assert _described("reward/pkg.mod:fn/mean").name == "reward/{component}/mean"
    assert describe("reward/a/b/mean") is None  # a pattern's part is one segment
    assert describe("train/old_logprob_seconds") is None  # always 0: no longer logged


def test_a_logged_key_missing_from_the_catalogue_is_reported():
    lines = [{"step": 1, "accuracy": 0.5, "reward/xmlcount/mean": 0.1, "memory/success_keys": 3},
             {"step": 1, "eval/accuracy": 0.2, "train/made_up": 1.0, "rewards/x": 0}]
    assert unknown_keys(lines) == ["rewards/x", "train/made_up"]
    assert unknown_keys(lines[:1]) == []


def test_catalogue_entries_are_unique_described_and_grouped():
    names = [k.name for k in CATALOGUE]
    assert len(set(names)) == len(names)
    assert all(k.meaning.strip() and k.group in GROUPS for k in CATALOGUE)
    assert all(any(k.group == group for k in CATALOGUE) for group in GROUPS)


def test_every_evaluation_field_is_catalogued():
    from memrl.train.evaluate import GreedyEvalResult

    fields = {f"eval/{f.name}" for f in dataclasses.fields(GreedyEvalResult)}
    assert fields == {k.name for k in CATALOGUE if k.group == "eval"}
