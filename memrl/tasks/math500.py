"""MATH-500 (HuggingFaceH4/MATH-500): 500 competition problems with LaTeX answers; evaluation
only (one split, ``test``; a local file goes in ``eval_path``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from memrl.tasks.base import TableTask


class Math500Task(TableTask):
    name: ClassVar[str] = "math500"
    splits: ClassVar[tuple[str, ...]] = ("test",)
    hub_id: ClassVar[str] = "HuggingFaceH4/MATH-500"
    hub_splits: ClassVar[Mapping[str, str]] = {"test": "test"}
    hub_id_field: ClassVar[str | None] = "unique_id"
    question_field_default: ClassVar[str] = "problem"
    answer_field_default: ClassVar[str] = "answer"
