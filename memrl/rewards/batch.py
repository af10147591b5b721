"""The input every reward function receives: one batch of completions with their questions.

A reward function is any callable ``fn(batch: RewardBatch, **kwargs) -> Sequence[float]``
returning one float per completion (``len(batch)`` values, finite). Built-in and user rewards
share this signature; user rewards are named in config by import path (``"mypkg.mod:fn"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RewardBatch:
    """Completions to score. All lists have one entry per completion (length ``N``)."""

    questions: Sequence[str]  # [N] question text of each completion's prompt
    completions: Sequence[str]  # [N] generated text, special tokens removed
    answers: Sequence[str]  # [N] gold answer of the question
    completion_lengths: Sequence[int]  # [N] completion length in tokens
    max_completion_length: int  # the generation budget in tokens (rollout max_tokens)
    metas: Sequence[dict[str, Any]] = field(default_factory=tuple)  # [N] Record.meta, or empty

    def __post_init__(self) -> None:
        n = len(self.completions)
        for name in ("questions", "answers", "completion_lengths"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"RewardBatch.{name} has {len(getattr(self, name))} entries, "
                    f"expected {n} (one per completion)"
                )
        if self.metas and len(self.metas) != n:
            raise ValueError(f"RewardBatch.metas has {len(self.metas)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.completions)

    def meta(self, i: int) -> dict[str, Any]:
        """Record.meta of completion ``i`` (empty when the batch carries none)."""
        return self.metas[i] if self.metas else {}


class RewardFn(Protocol):
    """Signature of a reward function (built-in or user-supplied)."""

    # *args and **kwargs of Any: each function takes keywords of its own (a gradual signature,
    # which any function of a batch matches)
    def __call__(self, batch: RewardBatch, *args: Any, **kwargs: Any) -> Sequence[float]: ...
