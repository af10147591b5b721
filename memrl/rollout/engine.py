"""The generation-engine interface, its sampling settings, and the batch assembly engines share.

``behaviour_logprobs`` convention (both engines): the log-probability of each sampled token
under the model's logits divided by the sampling temperature, ``log_softmax(logits / T)``,
before any top-p truncation. The learner recomputes exactly this with the same temperature,
so the importance ratio of an unchanged policy is 1. With ``top_p < 1`` the tokens were drawn
from the truncated, renormalised distribution, which these numbers do not describe (see
each engine for what it can report). In greedy mode ``T = 1``: the raw model distribution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from memrl.config import GRPOConfig, default_of
from memrl.types import RolloutBatch
from memrl.weights import PackedWeights


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample one request: ``num_generations`` completions per prompt.

    ``seed`` makes a request reproducible: the same seed, prompts and weights give the same
    completions on the same engine and device. ``None`` draws fresh randomness.
    """

    temperature: float = default_of(GRPOConfig, "temperature")
    top_p: float = default_of(GRPOConfig, "top_p")
    max_tokens: int = default_of(GRPOConfig, "max_completion_length")
    num_generations: int = default_of(GRPOConfig, "num_generations")
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

    @property
    def load_phases(self) -> dict[str, float]:
        """Seconds of the last :meth:`load_weights` by phase (e.g. ``reload``, ``verify``);
        empty for an engine that does not break its loads down."""
        return {}


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
