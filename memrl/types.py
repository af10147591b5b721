"""Data types shared across memrl: task records and the trajectory batch.

Shapes are written beside each field, once, here. ``N`` is the number of completions
(prompts × ``grpo.num_generations``), ``P`` the padded prompt length and ``L`` the padded
completion length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Record:
    """One problem of a task: a question and its gold answer.

    ``id`` is stable across runs (the row number or a generator index), so checkpoints can
    record which prompts were consumed.
    """

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutBatch:
    """Completions produced by one rollout worker for a set of prompt groups.

    Completion ``i`` answers prompt ``group_index[i]``; each prompt appears
    ``num_generations`` times in a row. Tensors are on CPU so they travel through Ray's object
    store without a device.
    """

    prompt_ids: torch.Tensor  # [N, P] int64, left-padded with the tokenizer's pad id
    prompt_mask: torch.Tensor  # [N, P] int64, 1 for real prompt tokens
    completion_ids: torch.Tensor  # [N, L] int64, right-padded
    completion_mask: torch.Tensor  # [N, L] int64, 1 up to and including EOS
    behaviour_logprobs: torch.Tensor  # [N, L] float32, log-prob of each sampled token
    token_versions: torch.Tensor  # [N, L] int64, weight version that sampled each token
    texts: list[str]  # [N] decoded completions, special tokens removed
    group_index: list[int]  # [N] index of the prompt in the request
    record_ids: list[str]  # [N] Record.id of each completion's question
    weight_version: int  # newest weight version used in this batch
    worker_id: str = ""  # which rollout worker produced it (for metrics and fault reports)

    @property
    def num_completions(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def completion_lengths(self) -> torch.Tensor:  # [N] int64, tokens per completion
        return self.completion_mask.sum(dim=1)
