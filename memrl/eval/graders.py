"""The two graders a completion can be judged by, and what each calls "correct".

- ``extractive_match``: the paper's LightEval-style evaluation (:mod:`memrl.grading`): the answer
  is read from the ``<answer>`` tag, a ``\\boxed{}`` or the free text, then checked with
  math-verify. Lenient about format; what ``memrl eval`` uses for a model that is not a run.
- ``correctness_reward``: the task's correctness reward as a training run computes it (the same
  reward plan, with the run's ``task.verifier``): the answer is the ``<answer>`` tag's content
  (the whole completion when there is no tag, as the official code splits it), compared as a
  string under ``verifier: exact`` and by math-verify under ``math``. This is the grader of a
  run's own evaluation (its ``accuracy_before``/``accuracy_after``), so ``memrl eval`` uses it
  when pointed at a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from memrl.grading import ScoredAnswer

if TYPE_CHECKING:
    from memrl.tasks.base import Task
    from memrl.types import Record
    from memrl.verify import CheckMode

Grader = Literal["extractive_match", "correctness_reward"]
GRADERS: tuple[str, ...] = ("extractive_match", "correctness_reward")
VERIFIERS: tuple[str, ...] = ("exact", "math")


def score_completions(
    task: Task, records: Sequence[Record], completions: Sequence[str], *, timeout_s: float = 5.0
) -> list[ScoredAnswer]:
    """Score ``completions[i]`` against ``records[i]`` by the task's own check
    (:meth:`memrl.tasks.base.Task.score_answers`: answer extraction and math-verify, or e.g.
    Countdown's equation check). ``timeout_s`` bounds each math-verify call."""
    if len(records) != len(completions):
        raise ValueError(f"{len(completions)} completions for {len(records)} records")
    return task.score_answers(records, completions, timeout_s=timeout_s)


def score_with_correctness_reward(
    task: Task, records: Sequence[Record], completions: Sequence[str], lengths: Sequence[int], *,
    verifier: CheckMode, max_tokens: int,
) -> list[ScoredAnswer]:
    """Judge each completion by the task's correctness reward (value > 0.5 is correct), built by
    the same :func:`memrl.rewards.total.reward_plan` a training run uses."""
    from memrl.rewards.batch import RewardBatch
    from memrl.rewards.registry import RewardComposer
    from memrl.rewards.total import reward_plan

    plan = reward_plan("r1", task.rule_rewards, task.correctness_reward, verifier=verifier,
                       reference=False, lambda_exploit=0.0, lambda_explore=0.0)
    spec = next(s for s in plan.specs if s.label == plan.correctness)
    batch = RewardBatch(
        questions=[r.question for r in records], completions=list(completions),
        answers=[r.answer for r in records], completion_lengths=list(lengths),
        max_completion_length=max_tokens, metas=[r.meta for r in records],
    )
    values = RewardComposer([spec]).score(batch).components[plan.correctness]
    return [ScoredAnswer(*task.reward_answer(text, verifier), bool(value > 0.5))
            for text, value in zip(completions, values)]


def grade(
    grader: str, task: Task, records: Sequence[Record], completions: Sequence[str],
    lengths: Sequence[int], *, verifier: CheckMode, max_tokens: int, timeout_s: float,
) -> list[ScoredAnswer]:
    """Score ``completions[i]`` against ``records[i]`` with the named grader."""
    if grader == "extractive_match":
        return score_completions(task, records, completions, timeout_s=timeout_s)
    return score_with_correctness_reward(task, records, completions, lengths,
                                         verifier=verifier, max_tokens=max_tokens)
