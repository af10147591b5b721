"""Atomic, verified training checkpoints on a local path or a cloud URI (fsspec).

Layout (``OUTPUT_DIR`` may be ``/path``, ``file:///path``, ``s3://bucket/run``, ``gs://…``)::

    OUTPUT_DIR/checkpoints/step_N/
        driver.json        step, weight version, prompt-stream position, RNG states, ...
        learner/           the learner group's state (weights, optimizer, scheduler)
        memory/            the episodic-memory snapshot (its own verified format)
        manifest.json      sha256 and size of every file above; written after them
    OUTPUT_DIR/checkpoints/latest   a one-line text file naming the newest complete step_N

A checkpoint is written under ``step_N.partial-<id>``, renamed to ``step_N`` once its manifest
is in place, and only then named by ``latest`` — so a crash at any point leaves the previous
checkpoint as ``latest``. Loading verifies every file against the manifest before anything
reads it: a truncated or altered checkpoint is refused with the file named.

Writers on other nodes (learner ranks, the memory actor) save into a local directory given by
:func:`local_staging` and report their files' digests with :func:`digest_dir`; for a cloud URI
the staging directory is uploaded when the block ends.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec

from memrl.errors import InputError

# The names are the run directory's (memrl.run_dir); short here, where every line uses them.
from memrl.run_dir import CHECKPOINT_DRIVER_FILE as DRIVER_STATE
from memrl.run_dir import CHECKPOINT_MANIFEST_FILE as MANIFEST
from memrl.run_dir import CHECKPOINT_PREFIX, PARTIAL_MARK, checkpoint_name, checkpoint_step, checkpoints_uri
from memrl.run_dir import LATEST_FILE as LATEST

FORMAT_VERSION = 1


class CheckpointError(InputError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""

    label = "checkpoint refused"
    hint = ("resume from another checkpoint (--resume DIR), or start fresh with --resume none in a "
            "new output_dir")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_dir(directory: str | Path, prefix: str = "") -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "bytes"}}`` of every file under a local ``directory``."""
    root = Path(directory)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f"{prefix}{path.relative_to(root).as_posix()}"
        out[rel] = {"sha256": _sha256_file(path), "bytes": path.stat().st_size}
    return out


def _protocols(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def is_local(uri: str) -> bool:
    """True for a plain path or a ``file://`` URI."""
    return "file" in _protocols(fsspec.core.url_to_fs(uri)[0])


def local_path(uri: str) -> Path:
    """The filesystem path of a local ``uri`` (plain path or ``file://``)."""
    return Path(fsspec.core.url_to_fs(uri)[1])


def upload_dir(local: str | Path, uri: str) -> None:
    """Copy the files under a local directory to ``uri`` (a cloud URI or another path)."""
    fs, remote = fsspec.core.url_to_fs(uri)
    fs.put(str(local).rstrip("/") + "/", remote.rstrip("/") + "/", recursive=True)


@contextmanager
def local_staging(uri: str) -> Iterator[Path]:
    """A local directory whose contents end up at ``uri``.

    For a local ``uri`` it is that directory itself; for a cloud URI it is a temporary
    directory uploaded (recursively) when the block ends without error.
    """
    if is_local(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="memrl-stage-"))
    try:
        yield tmp
        upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local directory holding the files at ``uri`` (downloaded for a cloud URI)."""
    if is_local(uri):
        yield local_path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="memrl-fetch-"))
    try:
        fs, remote = fsspec.core.url_to_fs(uri)
        fs.get(remote.rstrip("/") + "/", str(tmp) + "/", recursive=True)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class CheckpointManager:
    """Creates, completes, finds, verifies and prunes checkpoints under ``OUTPUT_DIR/checkpoints``."""

    def __init__(self, output_dir: str, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"trainer.keep_last_checkpoints = {keep_last}: must be >= 1")
        self.uri = checkpoints_uri(output_dir)
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)
        self.keep_last = keep_last
        # Names this manager's partial checkpoints: pruning removes only its own, never a
        # partial another writer is filling.
        self.token = uuid.uuid4().hex[:8]

    def _uri(self, name: str) -> str:
        path = f"{self.root.rstrip('/')}/{name}"
        return path if "file" in _protocols(self.fs) else self.fs.unstrip_protocol(path)

    # -- writing -------------------------------------------------------------------------------
    def begin(self, step: int) -> str:
        """A fresh partial directory for checkpoint ``step``; returns its URI."""
        name = f"{checkpoint_name(step)}{PARTIAL_MARK}{self.token}-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(f"{self.root}/{name}", exist_ok=True)
        return self._uri(name)

    def complete(self, partial_uri: str, step: int, driver_state: dict[str, Any],
                 files: dict[str, dict[str, Any]] | None = None) -> str:
        """Write the driver state and manifest, publish ``step_N``, point ``latest`` at it.

        On a local path the manifest covers every file in the checkpoint. For a cloud URI it
        covers ``files``, the digests the remote writers reported (paths relative to the
        checkpoint; the memory snapshot verifies itself with its own manifest). Returns the
        URI of the completed checkpoint.
        """
        partial = fsspec.core.url_to_fs(partial_uri)[1]
        driver_bytes = json.dumps(driver_state, indent=1, sort_keys=True).encode()
        with self.fs.open(f"{partial}/{DRIVER_STATE}", "wb") as fh:
            fh.write(driver_bytes)
        entries = digest_dir(local_path(partial_uri)) if is_local(partial_uri) else dict(files or {})
        entries[DRIVER_STATE] = {"sha256": hashlib.sha256(driver_bytes).hexdigest(),
                                 "bytes": len(driver_bytes)}
        manifest = {"format_version": FORMAT_VERSION, "step": step, "files": entries}
        with self.fs.open(f"{partial}/{MANIFEST}", "wb") as fh:
            fh.write(json.dumps(manifest, indent=1, sort_keys=True).encode())
        final = f"{self.root}/{checkpoint_name(step)}"
        if self.fs.exists(final):  # a re-run of the same step after a resume replaces it
            self.fs.rm(final, recursive=True)
        self.fs.mv(partial, final, recursive=True)
        # Written last: until here, `latest` still names the previous complete checkpoint.
        tmp_latest = f"{self.root}/{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp_latest, "wb") as fh:
            fh.write(f"{checkpoint_name(step)}\n".encode())
        self.fs.mv(tmp_latest, f"{self.root}/{LATEST}")
        self._prune()
        return self._uri(checkpoint_name(step))

    def _prune(self) -> None:
        steps = sorted(self.list_steps())
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            self.fs.rm(f"{self.root}/{checkpoint_name(old)}", recursive=True)
        self._remove_partials(lambda name: f"{PARTIAL_MARK}{self.token}-" in name)

    def remove_stale_partials(self) -> int:
        """Remove partial checkpoints left by earlier (crashed) runs; returns how many.

        Call it only while holding the run directory's lock (:mod:`memrl.run_lock`): then no
        other writer can be filling one of them."""
        return self._remove_partials(lambda name: f"{PARTIAL_MARK}{self.token}-" not in name)

    def _remove_partials(self, select: Any) -> int:
        if not self.fs.exists(self.root):
            return 0
        removed = 0
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if PARTIAL_MARK in name and select(name):
                self.fs.rm(entry, recursive=True)
                removed += 1
        return removed

    # -- reading -------------------------------------------------------------------------------
    def list_steps(self) -> list[int]:
        """Steps of the complete checkpoints present (those with a manifest)."""
        if not self.fs.exists(self.root):
            return []
        steps = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            step = checkpoint_step(name)
            if step is not None and self.fs.exists(f"{entry}/{MANIFEST}"):
                steps.append(step)
        return steps

    def latest(self) -> str | None:
        """URI of the checkpoint named by ``latest``, or None when there is none yet."""
        pointer = f"{self.root}/{LATEST}"
        if not self.fs.exists(pointer):
            return None
        name = self.fs.cat_file(pointer).decode().strip()
        if not (name.startswith(CHECKPOINT_PREFIX) and self.fs.exists(f"{self.root}/{name}/{MANIFEST}")):
            raise CheckpointError(f"{self._uri(LATEST)} names {name!r}, which is not a complete "
                                  "checkpoint (no manifest)")
        return self._uri(name)

    def verify(self, checkpoint_uri: str) -> dict[str, Any]:
        """Check every file against the manifest; returns the driver state."""
        fs, path = fsspec.core.url_to_fs(checkpoint_uri)
        manifest_path = f"{path}/{MANIFEST}"
        if not fs.exists(manifest_path):
            raise CheckpointError(f"{checkpoint_uri} has no {MANIFEST}: not a complete checkpoint")
        try:
            manifest = json.loads(fs.cat_file(manifest_path))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{checkpoint_uri}/{MANIFEST} is not valid JSON: {exc}") from exc
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{checkpoint_uri}: checkpoint format "
                                  f"{manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
        for rel, entry in manifest["files"].items():
            file_path = f"{path}/{rel}"
            if not fs.exists(file_path):
                raise CheckpointError(f"{checkpoint_uri}: {rel} is missing")
            digest = hashlib.sha256()
            size = 0
            with fs.open(file_path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
            if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
                raise CheckpointError(f"{checkpoint_uri}: {rel} does not match the manifest "
                                      f"({size} bytes, expected {entry['bytes']}): truncated or altered")
        return json.loads(fs.cat_file(f"{path}/{DRIVER_STATE}"))

    def resolve(self, resume: str) -> str | None:
        """The checkpoint to resume from: ``none`` → None; ``auto`` → latest or None; else a URI."""
        if resume == "none":
            return None
        if resume == "auto":
            return self.latest()
        return resume.rstrip("/")
