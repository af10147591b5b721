"""Versioned, pickle-free, atomically written and verified snapshot directories.

Layout of a snapshot directory (format ``memrl-memory-snapshot``, version 1)::

    manifest.json        {"body": {...}, "sha256": <sha256 of the canonical JSON of body>}
    <name>.npy           one NumPy array per entry (np.save, allow_pickle=False)
    <name>.json          one JSON document per entry (UTF-8)

``body`` holds ``format``, ``version``, free-form ``meta`` (JSON) and ``files``: for every
file its ``sha256`` and size in ``bytes``. What the arrays and documents mean is defined by
the writer (:mod:`memrl.memory.rewarder` documents the memory's entries).

Writing goes to a hidden sibling ``.<name>.tmp-<random>``; each file and the directory are
fsynced, then the previous snapshot is renamed to ``.<name>.previous``, the new one renamed
into place, and the previous one removed. A crash at any point leaves either the old or the
new snapshot complete; :func:`read_snapshot` falls back to ``.<name>.previous`` when the
directory itself is missing. Reading verifies the manifest checksum and every file's size and
checksum before loading anything, and never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memrl.errors import InputError

FORMAT = "memrl-memory-snapshot"
VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CHUNK = 1 << 22


class SnapshotError(InputError, RuntimeError):
    """A snapshot that cannot be trusted or read; the message names the file."""

    label = "memory snapshot refused"
    hint = "use another snapshot (an older checkpoint's memory/)"


@dataclass
class Snapshot:
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    documents: dict[str, Any]
    path: Path  # directory actually read (the ``.previous`` fallback when it was used)


def write_snapshot(
    directory: str | Path,
    arrays: dict[str, np.ndarray],
    documents: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write ``arrays`` and ``documents`` atomically to ``directory`` (replacing any previous
    snapshot there). Returns the directory."""
    directory = Path(directory).absolute()
    for name in [*arrays, *documents]:
        if not _NAME.match(name):
            raise ValueError(f"snapshot entry name {name!r} must match {_NAME.pattern}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        for name, array in arrays.items():
            files[f"{name}.npy"] = _write_file(
                tmp / f"{name}.npy", lambda f, a=array: np.save(f, np.asarray(a), allow_pickle=False)
            )
        for name, doc in documents.items():
            data = json.dumps(doc, ensure_ascii=False).encode("utf-8")
            files[f"{name}.json"] = _write_file(tmp / f"{name}.json", lambda f, d=data: f.write(d))
        body = {"format": FORMAT, "version": VERSION, "meta": meta, "files": files}
        manifest = {"body": body, "sha256": _digest_body(body)}
        _write_file(tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode("utf-8")))
        _fsync_dir(tmp)
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_snapshot(directory: str | Path) -> Snapshot:
    """Verify then load a snapshot; any missing, truncated or altered file raises
    :class:`SnapshotError` naming it, before anything is returned."""
    directory = Path(directory)
    if not directory.is_dir():
        previous = _previous(directory)
        if not previous.is_dir():
            raise SnapshotError(f"no snapshot directory at {directory}")
        directory = previous
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        body, digest = manifest["body"], manifest["sha256"]
        files = body["files"]
    except FileNotFoundError:
        raise SnapshotError(f"{manifest_path}: missing (incomplete or not a memrl snapshot)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{manifest_path}: unreadable manifest ({exc!r})") from None
    if _digest_body(body) != digest:
        raise SnapshotError(f"{manifest_path}: checksum mismatch (the manifest was altered)")
    if body.get("format") != FORMAT:
        raise SnapshotError(f"{manifest_path}: format {body.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(body.get("version"), int) or body["version"] > VERSION:
        raise SnapshotError(
            f"{manifest_path}: version {body.get('version')!r}; this memrl reads up to {VERSION}"
        )
    for fname, info in files.items():
        _verify(directory, fname, info)
    arrays: dict[str, np.ndarray] = {}
    documents: dict[str, Any] = {}
    for fname in files:
        path = directory / fname
        try:
            if fname.endswith(".npy"):
                arrays[fname[:-4]] = np.load(path, allow_pickle=False)
            elif fname.endswith(".json"):
                documents[fname[:-5]] = json.loads(path.read_text(encoding="utf-8"))
            else:
                raise SnapshotError(f"{path}: unknown file type")
        except (ValueError, OSError) as exc:
            raise SnapshotError(f"{path}: cannot be loaded ({exc!r})") from None
    return Snapshot(meta=body.get("meta", {}), arrays=arrays, documents=documents, path=directory)


def _verify(directory: Path, fname: str, info: Any) -> None:
    path = directory / fname
    if not _NAME.match(fname):
        raise SnapshotError(f"{directory / MANIFEST}: bad file name {fname!r}")
    try:
        expected_size, expected_sha = int(info["bytes"]), str(info["sha256"])
    except (KeyError, TypeError, ValueError):
        raise SnapshotError(f"{directory / MANIFEST}: bad entry for {fname}") from None
    if not path.is_file():
        raise SnapshotError(f"{path}: missing")
    size = path.stat().st_size
    if size != expected_size:
        raise SnapshotError(f"{path}: truncated or resized ({size} bytes, manifest says {expected_size})")
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    if sha.hexdigest() != expected_sha:
        raise SnapshotError(f"{path}: checksum mismatch (file corrupted or altered)")


class _HashingWriter:
    """File wrapper that hashes and counts what is written (np.save streams through it)."""

    def __init__(self, raw: Any):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        data = bytes(data) if not isinstance(data, bytes) else data
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _write_file(path: Path, write: Any) -> dict[str, Any]:
    with open(path, "wb") as raw:
        writer = _HashingWriter(raw)
        write(writer)
        raw.flush()
        os.fsync(raw.fileno())
    return {"sha256": writer.sha.hexdigest(), "bytes": writer.size}


def _digest_body(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _previous(directory: Path) -> Path:
    return directory.with_name(f".{directory.name}.previous")


def _swap_in(tmp: Path, directory: Path) -> None:
    previous = _previous(directory)
    if directory.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.rename(directory, previous)
    os.rename(tmp, directory)
    _fsync_dir(directory.parent)
    if previous.exists():
        shutil.rmtree(previous)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A sharded memory is a directory of per-shard snapshots plus this index, written last.
SHARD_INDEX = "shards.json"


def shard_dir(directory: str | Path, shard_index: int) -> Path:
    """Where shard ``shard_index`` of a sharded snapshot lives."""
    return Path(directory) / f"shard-{shard_index:04d}"


def write_shard_index(directory: str | Path, num_shards: int) -> None:
    """Mark a sharded snapshot complete (after every shard's snapshot was written)."""
    directory = Path(directory)
    tmp = directory / f".{SHARD_INDEX}.tmp"
    payload = {"format": FORMAT, "num_shards": num_shards}
    _write_file(tmp, lambda f: f.write(json.dumps(payload).encode("utf-8")))
    os.replace(tmp, directory / SHARD_INDEX)
    _fsync_dir(directory)


def snapshot_parts(directory: str | Path) -> list[Path]:
    """The snapshot directories that make up ``directory``: itself, or its shards when it is a
    sharded snapshot (``shards.json`` present)."""
    directory = Path(directory)
    index = directory / SHARD_INDEX
    if not index.is_file():
        return [directory]
    try:
        num_shards = int(json.loads(index.read_text(encoding="utf-8"))["num_shards"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{index}: unreadable ({exc!r})") from None
    return [shard_dir(directory, i) for i in range(num_shards)]
