"""GSM8K (openai/gsm8k, config ``main``): grade-school word problems; the gold answer is the
text after ``####`` in the worked solution (kept as ``meta["solution"]``)."""

from __future__ import annotations

from typing import ClassVar

from memrl.tasks.base import TableTask
from memrl.tasks.files import RowError


def final_answer_after_hashes(solution: str) -> str:
    """The text after the last ``####`` of a GSM8K solution, stripped (commas kept: the paper's
    exact-match reward compares these strings)."""
    if "####" not in solution:
        raise RowError("the answer has no '#### <final answer>' (GSM8K format; "
                       "use plain_answers for a file of bare answers)")
    return solution.rsplit("####", 1)[1].strip()


class GSM8KTask(TableTask):
    """GSM8K train (7,473) and test (1,319) splits, from the hub or local files."""

    name: ClassVar[str] = "gsm8k"
    hub_id: ClassVar[str] = "openai/gsm8k"
    hub_config: ClassVar[str | None] = "main"
    keep_solution: ClassVar[bool] = True

    def parse_answer(self, raw: str) -> str | None:
        return final_answer_after_hashes(raw)
