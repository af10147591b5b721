"""Checkpoint manager: atomic publication, `latest` pointer, pruning, verification, URIs."""

import json

import pytest

from memrl.checkpoint import CheckpointError, CheckpointManager, local_staging


def write_checkpoint(manager: CheckpointManager, step: int, payload: bytes = b"weights") -> str:
    partial = manager.begin(step)
    with local_staging(f"{partial}/learner") as d:
        (d / "model.bin").write_bytes(payload)
    return manager.complete(partial, step, {"step": step, "stream": {"epoch": 0}})


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_complete_then_latest_and_verify(tmp_path, scheme):
    manager = CheckpointManager(f"{scheme}{tmp_path}/run", keep_last=2)
    assert manager.latest() is None and manager.resolve("auto") is None
    write_checkpoint(manager, 2)
    uri = write_checkpoint(manager, 4)
    assert manager.latest() == uri and uri.endswith("checkpoints/step_4")
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "step_4"
    state = manager.verify(uri)
    assert state["step"] == 4
    manifest = json.loads((tmp_path / "run/checkpoints/step_4/manifest.json").read_text())
    assert set(manifest["files"]) == {"learner/model.bin", "driver.json"}
    assert manager.resolve("none") is None and manager.resolve("auto") == uri


def test_keep_last_prunes_oldest(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=2)
    for step in (1, 2, 3, 4):
        write_checkpoint(manager, step)
    assert sorted(manager.list_steps()) == [3, 4]


def test_crash_mid_save_leaves_previous_latest(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep_last=3)
    good = write_checkpoint(manager, 2)
    partial = manager.begin(4)  # the process dies here: files written, never completed
    with local_staging(f"{partial}/learner") as d:
        (d / "model.bin").write_bytes(b"half")
    assert manager.latest() == good
    assert manager.list_steps() == [2]
    write_checkpoint(manager, 6)  # the next save clears the leftover partial directory
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".partial-" in p.name]


def test_truncated_or_tampered_files_are_refused(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    uri = write_checkpoint(manager, 2, payload=b"0123456789")
    target = tmp_path / "checkpoints/step_2/learner/model.bin"
    target.write_bytes(b"01234")
    with pytest.raises(CheckpointError, match="learner/model.bin does not match the manifest"):
        manager.verify(uri)
    target.write_bytes(b"0123456780")  # same size, other bytes
    with pytest.raises(CheckpointError, match="truncated or altered"):
        manager.verify(uri)
    target.unlink()
    with pytest.raises(CheckpointError, match="learner/model.bin is missing"):
        manager.verify(uri)


def test_latest_pointing_at_incomplete_checkpoint_is_an_error(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    write_checkpoint(manager, 2)
    (tmp_path / "checkpoints/latest").write_text("step_9\n")
    with pytest.raises(CheckpointError, match="step_9"):
        manager.latest()


def test_remote_style_uri_through_fsspec_memory_filesystem():
    # fsspec's in-memory filesystem stands in for s3:// or gs:// (same code path: staging
    # directory uploaded with fs.put, manifest from the writers' digests).
    from memrl.checkpoint import digest_dir

    manager = CheckpointManager("memory://bucket/run", keep_last=2)
    partial = manager.begin(3)
    with local_staging(f"{partial}/learner") as d:
        (d / "model.bin").write_bytes(b"abc")
        files = {f"learner/{k}": v for k, v in digest_dir(d).items()}
    uri = manager.complete(partial, 3, {"step": 3}, files=files)
    assert uri.startswith("memory://") and uri.endswith("bucket/run/checkpoints/step_3")
    assert manager.latest() == uri
    assert manager.verify(uri)["step"] == 3
