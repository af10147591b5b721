"""Memory snapshots: exact round trip, atomic writes, refusal of damaged snapshots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from memrl.memory import HashingEmbedder, MemoryRewarder, MemorySettings, SnapshotError
from memrl.memory import snapshot as snapshot_module
from memrl.memory.inspection import inspect_snapshot

EMBEDDER = HashingEmbedder(16)


def filled_rewarder(mode: str = "paper", steps: int = 9) -> MemoryRewarder:
    """Small capacities so keys are evicted and value FIFOs wrap around."""
    settings = MemorySettings.default(
        mode=mode, k=2, warmup=2, capacity_keys=4, capacity_values=3, window=7, embedder="hash", device="cpu"
    )
    rewarder = MemoryRewarder(settings, EMBEDDER)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        questions = [f"question {int(i)}" for i in rng.integers(0, 7, 3) for _ in range(3)]
        reasonings = [f"reasoning {int(i)}" for i in rng.integers(0, 40, len(questions))]
        rewarder.score_and_insert(questions, reasonings, rng.random(len(questions)) < 0.5)
    return rewarder


def next_batch():
    return ["question 1"] * 3 + ["question 9"] * 3, [f"reasoning {i}" for i in range(6)], [1, 0, 1, 0, 0, 1]


def assert_same_contents(a: MemoryRewarder, b: MemoryRewarder) -> None:
    arrays_a, arrays_b = a.shard.to_arrays(), b.shard.to_arrays()
    assert set(arrays_a) == set(arrays_b) == {"success", "failure"}
    for name in arrays_a:
        x, y = arrays_a[name], arrays_b[name]
        np.testing.assert_array_equal(x.keys, y.keys)
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(x.value_counts, y.value_counts)
        assert x.questions == y.questions and x.value_texts == y.value_texts
        assert x.next_evict == y.next_evict
    assert a.normaliser.state_dict() == b.normaliser.state_dict()
    assert a.steps_done == b.steps_done


@pytest.mark.parametrize("mode", ["paper", "reference"])
def test_round_trip_is_exact_and_continues_identically(tmp_path, mode):
    original = filled_rewarder(mode)
    assert original.shard.success.num_keys == 4  # full: evictions happened
    original.save(tmp_path / "snap")
    restored = MemoryRewarder.from_snapshot(tmp_path / "snap", EMBEDDER)
    assert restored.settings == original.settings
    assert_same_contents(original, restored)
    for _ in range(2):  # same rewards and same evictions afterwards
        want, got = original.score_and_insert(*next_batch()), restored.score_and_insert(*next_batch())
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert_same_contents(original, restored)


def test_layout_is_documented_and_pickle_free(tmp_path):
    path = filled_rewarder().save(tmp_path / "snap")
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(
        ["manifest.json", "state.json"]
        + [
            f"{m}_{e}"
            for m in ("success", "failure")
            for e in ("keys.npy", "values.npy", "value_counts.npy", "questions.json", "value_texts.json")
        ]
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["body"]["format"] == "memrl-memory-snapshot" and manifest["body"]["version"] == 1
    assert set(manifest["body"]["files"]) == set(names) - {"manifest.json"}
    keys = np.load(path / "success_keys.npy", allow_pickle=False)
    assert keys.dtype == np.float32 and keys.shape == (4, 16)
    assert not list(tmp_path.glob(".*"))  # no temp or previous directory left behind


def damage_truncate(path: Path) -> str:
    target = path / "success_values.npy"
    target.write_bytes(target.read_bytes()[:-100])
    return "success_values.npy: truncated"


def damage_flip_byte(path: Path) -> str:
    target = path / "failure_keys.npy"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    return "failure_keys.npy: checksum mismatch"


def damage_text(path: Path) -> str:
    target = path / "success_questions.json"
    target.write_text(target.read_text().replace("question", "questiom", 1))
    return "success_questions.json: checksum mismatch"


def damage_delete(path: Path) -> str:
    (path / "state.json").unlink()
    return "state.json: missing"


def damage_manifest(path: Path) -> str:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["body"]["meta"]["settings"]["k"] = 7
    (path / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json: checksum mismatch"


def damage_manifest_truncated(path: Path) -> str:
    (path / "manifest.json").write_text((path / "manifest.json").read_text()[:50])
    return "manifest.json: unreadable"


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_flip_byte, damage_text, damage_delete, damage_manifest, damage_manifest_truncated],
)
def test_damaged_snapshot_refused_and_nothing_half_loaded(tmp_path, damage):
    filled_rewarder().save(tmp_path / "snap")
    message = damage(tmp_path / "snap")
    target = filled_rewarder(steps=3)
    before = target.shard.to_arrays()["success"].questions, target.normaliser.state_dict()
    with pytest.raises(SnapshotError, match=message.replace("(", r"\(")):
        target.load(tmp_path / "snap")
    assert (target.shard.to_arrays()["success"].questions, target.normaliser.state_dict()) == before


def test_pickled_array_refused_even_with_valid_checksums(tmp_path):
    path = filled_rewarder().save(tmp_path / "snap")
    np.save(path / "success_value_counts.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest = json.loads((path / "manifest.json").read_text())
    body = manifest["body"]
    data = (path / "success_value_counts.npy").read_bytes()
    import hashlib

    body["files"]["success_value_counts.npy"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["sha256"] = snapshot_module._digest_body(body)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="success_value_counts.npy: cannot be loaded"):
        MemoryRewarder.from_snapshot(path, EMBEDDER)


def test_newer_version_refused(tmp_path):
    path = filled_rewarder().save(tmp_path / "snap")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["body"]["version"] = 99
    manifest["sha256"] = snapshot_module._digest_body(manifest["body"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="version 99"):
        MemoryRewarder.from_snapshot(path, EMBEDDER)


def test_crash_while_writing_keeps_previous_snapshot(tmp_path, monkeypatch):
    old = filled_rewarder(steps=3)
    old.save(tmp_path / "snap")
    new = filled_rewarder(steps=9)
    real_save = np.save
    calls = []

    def failing_save(f, arr, allow_pickle=False):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk full")
        return real_save(f, arr, allow_pickle=allow_pickle)

    monkeypatch.setattr(snapshot_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "snap")
    monkeypatch.undo()
    assert_same_contents(MemoryRewarder.from_snapshot(tmp_path / "snap", EMBEDDER), old)
    assert not list(tmp_path.glob(".*"))  # the partial temp directory was removed


def test_crash_between_renames_falls_back_to_previous(tmp_path, monkeypatch):
    old = filled_rewarder(steps=3)
    old.save(tmp_path / "snap")
    real_rename = os.rename
    renames = []

    def crash_on_second(src, dst):
        renames.append((src, dst))
        if len(renames) == 2:  # old moved aside, new not yet in place: the process "dies"
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(snapshot_module.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        filled_rewarder(steps=9).save(tmp_path / "snap")
    monkeypatch.undo()
    assert not (tmp_path / "snap").exists()
    assert_same_contents(MemoryRewarder.from_snapshot(tmp_path / "snap", EMBEDDER), old)
    newer = filled_rewarder(steps=5)
    newer.save(tmp_path / "snap")  # the next save completes normally and tidies up
    assert_same_contents(MemoryRewarder.from_snapshot(tmp_path / "snap", EMBEDDER), newer)
    assert not list(tmp_path.glob(".*"))


def test_snapshot_with_other_dim_refused(tmp_path):
    filled_rewarder().save(tmp_path / "snap")
    other = MemoryRewarder(MemorySettings.default(embedder="hash", device="cpu"), HashingEmbedder(8))
    with pytest.raises(SnapshotError, match="embedding dim 16"):
        other.load(tmp_path / "snap")


def test_inspect_shows_sizes_histogram_and_nearest_texts(tmp_path):
    settings = MemorySettings.default(capacity_values=10, embedder="hash", device="cpu")
    rewarder = MemoryRewarder(settings, EMBEDDER)
    rewarder.score_and_insert(
        ["How many apples?"] * 3 + ["What is 2+2?"],
        ["Count the apples: 3.", "Add 1 and 2 apples.", "I guess 7.", "2+2=4."],
        [1, 1, 0, 1],
    )
    rewarder.save(tmp_path / "snap")
    report = inspect_snapshot(tmp_path / "snap", query="How many apples?", k=1, embedder=EMBEDDER)
    assert "success memory: 2 keys, 3 values" in report
    assert "failure memory: 1 keys, 1 values" in report
    assert "2 values:        1 keys" in report  # histogram row
    success_part, failure_part = report.split("nearest failure keys")
    assert "question: 'How many apples?'" in success_part
    assert "'Add 1 and 2 apples.'" in success_part and "'Count the apples: 3.'" in success_part
    assert "cos 1.000" in success_part and "'I guess 7.'" in failure_part
    assert "'I guess 7.'" not in success_part


def test_snapshot_of_older_code_with_lambda_settings_still_loads(tmp_path):
    """Snapshots written before λ moved to the total reward carry lambda_exploit/explore in
    their settings; they load (the fields are ignored) and continue identically."""
    original = filled_rewarder()
    path = original.save(tmp_path / "snap")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["body"]["meta"]["settings"].update(lambda_exploit=1.0, lambda_explore=1.0)
    manifest["sha256"] = snapshot_module._digest_body(manifest["body"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    restored = MemoryRewarder.from_snapshot(path, EMBEDDER)
    assert restored.settings == original.settings
    assert "lambda_exploit" not in restored.settings.to_dict()
    assert_same_contents(original, restored)
    want, got = original.score_and_insert(*next_batch()), restored.score_and_insert(*next_batch())
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])
