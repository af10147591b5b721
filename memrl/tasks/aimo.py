"""AI-MO (AI-MO/NuminaMath-TIR): competition problems whose gold answer is the content of the
last ``\\boxed{}`` in the worked solution (rows without one are skipped, with a warning).

The paper's AI-MO runs sample 2,000 training problems; ``train_size`` (default 2,000) and
``seed`` choose them. The paper's reasoning-steps reward is not part of ``rule_rewards``.
"""

from __future__ import annotations

from typing import ClassVar

from memrl.tasks.base import XML_RULE_REWARDS, TableTask

PAPER_TRAIN_SIZE = 2_000


def last_boxed_content(text: str) -> str | None:
    """The brace-balanced content of the last ``\\boxed{...}`` in ``text``, stripped; None if
    there is none or its braces do not close."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    position = start + len("\\boxed")
    while position < len(text) and text[position] == " ":
        position += 1
    if position >= len(text) or text[position] != "{":
        return None
    depth = 0
    for end in range(position, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                content = text[position + 1 : end].strip()
                return content or None
    return None


class AIMOTask(TableTask):
    """NuminaMath-TIR train (sampled to ``train_size``) and test (99) splits."""

    name: ClassVar[str] = "aimo"
    hub_id: ClassVar[str] = "AI-MO/NuminaMath-TIR"
    question_field_default: ClassVar[str] = "problem"
    answer_field_default: ClassVar[str] = "solution"
    keep_solution: ClassVar[bool] = True
    rule_rewards: ClassVar[tuple[str, ...]] = tuple(r for r in XML_RULE_REWARDS if r != "integer")

    def __init__(
        self,
        *,
        path: str | None = None,
        eval_path: str | None = None,
        question_field: str | None = None,
        answer_field: str | None = None,
        id_field: str | None = None,
        plain_answers: bool = False,
        train_size: int | None = PAPER_TRAIN_SIZE,
        eval_size: int | None = None,
        seed: int = 0,
    ):
        """As ``TableTask``, but ``train_size`` defaults to the paper's 2,000 sampled problems
        (None keeps all ≈72k)."""
        super().__init__(
            path=path,
            eval_path=eval_path,
            question_field=question_field,
            answer_field=answer_field,
            id_field=id_field,
            plain_answers=plain_answers,
            train_size=train_size,
            eval_size=eval_size,
            seed=seed,
        )

    def parse_answer(self, raw: str) -> str | None:
        return last_boxed_content(raw)
