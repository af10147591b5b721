"""Load a policy model and its tokenizer from a local folder or the Hugging Face hub.

A hub id is looked up in the local cache first; only if it is missing there is the hub asked,
and only after a quick reachability check, so a machine without internet fails in well under
a second with a message that says how to point memrl at a local folder instead of after the
hub client's retries (tens of seconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (missing folder, offline, unknown hub id)."""


def _unavailable(name: str, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"cannot load model {name!r}: {why}. Download it elsewhere and pass its folder "
        f"(model.name_or_path=/path/to/folder), or use model.name_or_path=tiny for the "
        f"offline tiny model."
    )


def _looks_like_path(name: str) -> bool:
    """True for names that can only be a folder (absolute, relative or with several parts)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _hub_offline() -> bool:
    """Offline mode as the environment says now (the hub library reads it once, at import)."""
    return huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _hub_reachable() -> bool:
    """Whether the hub endpoint answers within ``HUB_PROBE_TIMEOUT_S`` seconds."""
    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # any failure to get an answer (DNS, refused, timeout, proxy) means no
        return False
    return True


def _resolve_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype | None:
    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
    return resolved


def _from_pretrained(
    source: str, dtype: str | torch.dtype | None, local_files_only: bool
) -> tuple[PreTrainedModel, Any]:
    options: dict[str, Any] = {"local_files_only": local_files_only}
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    if dtype is not None:
        options["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(source, **options)
    return model, tokenizer


def load_policy(
    name_or_path: str, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer from a local folder or a hub id (e.g. ``Qwen/Qwen2.5-0.5B-Instruct``).

    ``dtype`` is a torch dtype, its name (``"bfloat16"``) or ``"auto"``; ``None`` keeps the
    library default. The model is moved to ``device``. The tokenizer pads on the left (for
    batched generation) and has a pad token (its EOS token when it had none); the model's
    generation config uses the same pad id.

    Raises ``ModelUnavailableError`` when the folder does not exist, or the hub id is neither
    in the local cache nor downloadable (offline mode, hub unreachable, unknown or gated id).
    """
    dtype = _resolve_dtype(dtype)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        model, tokenizer = _from_pretrained(str(folder), dtype, local_files_only=True)
    elif _looks_like_path(name_or_path):
        raise _unavailable(name_or_path, f"the folder {folder} does not exist")
    else:
        try:
            model, tokenizer = _from_pretrained(name_or_path, dtype, local_files_only=True)
        except OSError as cache_miss:
            if _hub_offline():
                raise _unavailable(
                    name_or_path, "it is not in the local cache and HF_HUB_OFFLINE is set"
                ) from cache_miss
            if not _hub_reachable():
                raise _unavailable(
                    name_or_path,
                    f"it is not in the local cache and {constants.ENDPOINT} cannot be reached",
                ) from cache_miss
            try:
                model, tokenizer = _from_pretrained(name_or_path, dtype, local_files_only=False)
            except OSError as err:
                raise _unavailable(name_or_path, f"the hub could not provide it ({err})") from err

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer
