"""Load a Hugging Face dataset split, failing fast and clearly when the hub cannot be reached.

``datasets.load_dataset`` without network retries for ≈25 s before failing; with
``HF_HUB_OFFLINE=1`` it fails in milliseconds (or loads the local cache). So: in offline mode
we call it directly; otherwise one HEAD request to the hub endpoint (huggingface_hub's own HTTP
session, so proxies and ``HF_ENDPOINT`` apply) must answer within a few seconds, or we stop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from memrl.errors import InputError

if TYPE_CHECKING:
    import datasets

    from memrl.tasks.files import NumberedRow


class DatasetUnavailableError(InputError, RuntimeError):
    """A hub dataset cannot be loaded; the message says how to use a local file instead (so no
    separate hint). The CLI exits with code 2."""


def numbered_rows(table: datasets.Dataset) -> Iterable[NumberedRow]:
    """The rows of a table from :func:`load_hub_split`, numbered from 1 (as
    :func:`memrl.tasks.files.rows_to_records` takes them)."""
    # datasets leaves Dataset.__iter__ unannotated, and the type read from its body includes
    # formatted rows (lists); an unformatted table's rows are dicts
    return enumerate(table, start=1)  # pyright: ignore[reportReturnType]


def locate_hub_dataset(
    dataset_id: str,
    split: str,
    *,
    config: str | None = None,
    path_option: str = "data.path",
    fields: Sequence[str] = ("question", "answer"),
    probe_timeout_s: float = 3.0,
) -> str:
    """Where :func:`load_hub_split` would read ``dataset_id`` from, without loading it:
    ``cache <folder>`` (a copy in the Hugging Face cache) or ``hub <endpoint>`` (reachable).
    Raises DatasetUnavailableError (the same message as a failed load) otherwise."""
    import datasets.config
    from huggingface_hub import snapshot_download

    try:
        return "cache " + snapshot_download(dataset_id, repo_type="dataset", local_files_only=True)
    except Exception:  # LocalEntryNotFoundError and friends: not in the hub cache
        pass
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if offline:
        reason = "offline mode (HF_HUB_OFFLINE) is on and it is not in the local cache"
    else:
        reason = unreachable_reason(_hub_endpoint(), probe_timeout_s)
        if reason is None:
            return f"hub {_hub_endpoint()}/datasets/{dataset_id}"
        reason = f"it is neither in the local cache nor reachable ({reason})"
    raise DatasetUnavailableError(
        _message(dataset_id, config, split, reason, path_option, fields, offline)
    )


def load_hub_split(
    dataset_id: str,
    split: str,
    *,
    config: str | None = None,
    path_option: str = "data.path",
    fields: Sequence[str] = ("question", "answer"),
    probe_timeout_s: float = 3.0,
) -> datasets.Dataset:
    """``datasets.load_dataset(dataset_id, config, split=split)``, or DatasetUnavailableError.

    ``path_option`` and ``fields`` only shape the error message: the config key that takes a
    local file for this split and the fields each row of that file needs.
    """
    import datasets.config

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline:
        reason = unreachable_reason(_hub_endpoint(), probe_timeout_s)
        if reason is not None:
            raise DatasetUnavailableError(_message(
                dataset_id, config, split, f"it is neither in the local cache nor reachable "
                f"({reason})", path_option, fields, offline=False,
            ))
    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except OSError as exc:  # ConnectionError, DatasetNotFoundError, LocalEntryNotFoundError
        reason = f"{type(exc).__name__}: {exc}"
        if offline:
            reason = (
                f"offline mode (HF_HUB_OFFLINE) is on and it is not in the local cache ({reason})"
            )
        raise DatasetUnavailableError(
            _message(dataset_id, config, split, reason, path_option, fields, offline)
        ) from exc


def _hub_endpoint() -> str:
    from huggingface_hub import constants  # ENDPOINT honours HF_ENDPOINT (mirrors)

    return constants.ENDPOINT


def unreachable_reason(endpoint: str, timeout_s: float) -> str | None:
    """None if ``endpoint`` (a URL) answers a HEAD request, with any status, within
    ``timeout_s`` seconds; else why not. The request runs in a daemon thread so that a hanging
    name lookup (not covered by HTTP timeouts) cannot stall the caller past ``timeout_s``."""
    from huggingface_hub.utils import get_session

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout_s)
            outcome.append(None)
        except Exception as exc:  # the HTTP client's own error types, not OSError subclasses
            outcome.append(f"{endpoint} cannot be reached ({type(exc).__name__}: {exc})")

    worker = threading.Thread(target=probe, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        return f"{endpoint} did not answer within {timeout_s:g} s"
    return outcome[0]


def _message(
    dataset_id: str,
    config: str | None,
    split: str,
    reason: str,
    path_option: str,
    fields: Sequence[str],
    offline: bool,
) -> str:
    name = dataset_id + (f" (config {config!r})" if config else "")
    field_list = ", ".join(repr(f) for f in fields)
    text = (
        f"cannot load the Hugging Face dataset {name}, split {split!r}: {reason}. "
        f"To run without the hub, pass a local JSONL or Parquet file instead, e.g. "
        f"{path_option}=/path/to/{split}.jsonl, one row per problem with the fields {field_list}."
    )
    from huggingface_hub import constants

    text += (
        f" Or download it where the hub is reachable (`hf download {dataset_id} --repo-type "
        f"dataset`) and make that cache visible here (HF_HOME={constants.HF_HOME} now)."
    )
    if not offline:
        text += " To use a copy already in the Hugging Face cache, set HF_HUB_OFFLINE=1."
    return text
