"""Where ``memrl eval`` loads a model from: a folder, the hub cache, or the hub."""

from __future__ import annotations

from pathlib import Path


def resolve_model(name_or_path: str) -> str:
    """A loadable model: the folder itself, the local snapshot of a cached hub id, or (hub
    reachable) the hub id for the engine to download. Raises ModelUnavailableError otherwise,
    without the hub client's slow retries."""
    from memrl.model.loading import _hub_offline, _hub_reachable, _looks_like_path, _unavailable

    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return str(folder)
    if _looks_like_path(name_or_path):
        raise _unavailable(name_or_path, f"the folder {folder} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except OSError as cache_miss:  # LocalEntryNotFoundError and friends
        if _hub_offline():
            raise _unavailable(
                name_or_path, "it is not in the local cache and HF_HUB_OFFLINE is set"
            ) from cache_miss
        if not _hub_reachable():
            raise _unavailable(
                name_or_path, "it is not in the local cache and the hub cannot be reached"
            ) from cache_miss
    return name_or_path
