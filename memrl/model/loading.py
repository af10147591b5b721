"""Load a policy model and its tokenizer from a local folder or the Hugging Face hub.

A hub id is looked up in the local cache first; only if it is missing there is the hub asked,
and only after a quick reachability check, so a machine without internet fails in well under
a second with a message that says how to point memrl at a local folder instead of after the
hub client's retries (tens of seconds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from memrl.errors import InputError

HUB_PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelUnavailableError(InputError, RuntimeError):
    """The requested model cannot be loaded here (missing folder, offline, unknown hub id).

    The message names the model, says why, and what to do (so no separate hint); the CLI exits
    with code 2."""


def _unavailable(name: str, why: str) -> ModelUnavailableError:
    if _looks_like_path(name):
        todo = "pass an existing model folder (model.name_or_path=/path/to/folder)"
    else:
        todo = (
            f"download it where the hub is reachable (`hf download {name}`, or "
            f"`huggingface-cli download {name}`) and make that cache visible here "
            f"(HF_HOME={constants.HF_HOME} now), or pass a local folder "
            f"(model.name_or_path=/path/to/folder)"
        )
    return ModelUnavailableError(
        f"cannot load model {name!r}: {why}. To fix: {todo}; or use model.name_or_path=tiny "
        f"for the offline tiny model."
    )


@dataclass(frozen=True)
class ModelSource:
    """Where a model would be loaded from: ``folder`` (a local folder), ``cache`` (a complete
    copy in the Hugging Face cache) or ``hub`` (not cached; the hub answers)."""

    kind: str
    location: str


def locate_model(name_or_path: str) -> ModelSource:
    """Where :func:`load_policy` would find ``name_or_path``, without loading it.

    Raises ``ModelUnavailableError`` when it is a missing folder, or a hub id that is neither
    cached nor downloadable (offline mode, hub unreachable)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise _unavailable(name_or_path, f"the folder {folder} has no config.json")
        problem = model_folder_problem(folder)
        if problem is not None:
            raise ModelUnavailableError(
                f"cannot load model {name_or_path!r}: {problem}. To fix: write the folder again "
                "(a copy or an export cut short leaves it so), or pass another model folder")
        return ModelSource("folder", str(folder))
    if _looks_like_path(name_or_path):
        raise _unavailable(name_or_path, f"the folder {folder} does not exist")
    cached = huggingface_hub.try_to_load_from_cache(name_or_path, "config.json")
    if isinstance(cached, str):
        return ModelSource("cache", str(Path(cached).parent))
    missing = cache_miss_error(name_or_path)
    if missing is not None:
        raise missing
    return ModelSource("hub", f"{constants.ENDPOINT}/{name_or_path}")


# Files of which a Hugging Face tokenizer needs one (fast, SentencePiece, BPE or WordPiece).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def model_folder_problem(folder: Path) -> str | None:
    """What makes the model folder ``folder`` unloadable, read from its files without loading
    them (weights missing or cut short, no tokenizer), or None. Safetensors files are checked
    against their own header: its tensors must end within the file."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not list(folder.glob("pytorch_model*.bin")):
        return f"the folder {folder} has no weights (model.safetensors or pytorch_model.bin)"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem is not None:
            return f"{path} {problem}"
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return (f"the folder {folder} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
                "copy the tokenizer files of the model it was trained from into it")
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is incomplete (its header promises more bytes than it
    has, or cannot be read), or None."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"is cut short ({size} bytes, not even a header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"is cut short ({size} bytes; its header alone needs {8 + length})"
        try:
            header = json.loads(fh.read(length))
            end = max((int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "has an unreadable header (not a safetensors file, or damaged)"
    if 8 + length + end > size:
        return f"is cut short ({size} bytes of the {8 + length + end} its header describes)"
    return None


def loading_stage(name_or_path: str) -> str:
    """What loading ``name_or_path`` here will do, in a few words for a start-up report: read
    it, or download it from the hub (not in this machine's cache)."""
    try:
        source = locate_model(name_or_path)
    except ModelUnavailableError:  # the load itself raises it, with the whole message
        return f"loading the model {name_or_path}"
    if source.kind == "hub":
        return f"downloading the model {name_or_path} from {source.location} (not in this node's cache)"
    return f"loading the model {name_or_path}"


def cache_miss_error(name: str) -> ModelUnavailableError | None:
    """For a hub id that is not in the local cache: the error to raise when it cannot be
    downloaded either (offline mode, or the hub does not answer), else None (download it)."""
    if _hub_offline():
        return _unavailable(name, "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        return _unavailable(
            name,
            f"it is neither in the local Hugging Face cache nor reachable ({constants.ENDPOINT} "
            f"cannot be reached within {HUB_PROBE_TIMEOUT_S:g} s)",
        )
    return None


def _looks_like_path(name: str) -> bool:
    """True for names that can only be a folder (absolute, relative or with several parts)."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def _hub_offline() -> bool:
    """Offline mode as the environment says now (the hub library reads it once, at import)."""
    return huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _hub_reachable() -> bool:
    """Whether the hub endpoint answers within ``HUB_PROBE_TIMEOUT_S`` seconds (bounded even
    when the name lookup hangs)."""
    from memrl.tasks.hub import unreachable_reason

    return unreachable_reason(constants.ENDPOINT, HUB_PROBE_TIMEOUT_S) is None


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
            missing = cache_miss_error(name_or_path)
            if missing is not None:
                raise missing from cache_miss
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
    # transformers wraps PreTrainedModel.to in functools.wraps, which typeshed types unbound
    return model.to(device), tokenizer  # pyright: ignore[reportArgumentType]
