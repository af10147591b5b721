"""AIME 2024 (HuggingFaceH4/aime_2024: the 30 problems of AIME I and II 2024, fields ``id``,
``problem``, ``solution``, ``answer``); evaluation only. The hub stores them as its ``train``
split; here they are the ``test`` split (a local file goes in ``eval_path``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from memrl.tasks.base import TableTask


class AIME24Task(TableTask):
    name: ClassVar[str] = "aime24"
    splits: ClassVar[tuple[str, ...]] = ("test",)
    hub_id: ClassVar[str] = "HuggingFaceH4/aime_2024"
    hub_splits: ClassVar[Mapping[str, str]] = {"test": "train"}
    question_field_default: ClassVar[str] = "problem"
    answer_field_default: ClassVar[str] = "answer"
