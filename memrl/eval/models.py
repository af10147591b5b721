"""Where ``memrl eval`` loads a model from: a folder, the hub cache, or the hub."""

from __future__ import annotations

from pathlib import Path


def resolve_model(name_or_path: str) -> str:
    """A loadable model: the folder itself, the local snapshot of a cached hub id, or (hub
    reachable) the hub id for the engine to download. Raises ModelUnavailableError otherwise,
    without the hub client's slow retries."""
    from memrl.model.loading import _looks_like_path, _unavailable, cache_miss_error

    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return str(folder)
    if _looks_like_path(name_or_path):
        raise _unavailable(name_or_path, f"the folder {folder} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except OSError as cache_miss:  # LocalEntryNotFoundError and friends
        missing = cache_miss_error(name_or_path)
        if missing is not None:
            raise missing from cache_miss
    return name_or_path
