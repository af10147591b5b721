"""Countdown: the generator, the safe equation evaluator and the two rewards."""

from fractions import Fraction

import pytest

from memrl.rewards.batch import RewardBatch
from memrl.rewards.countdown import (
    MAX_EQUATION_CHARS,
    EquationError,
    countdown_equation_reward,
    countdown_format_reward,
    evaluate_equation,
)
from memrl.tasks import make_task


def _batch(completions, numbers=(3, 5, 7), target=22, answer=None, with_target=True):
    meta = {"numbers": list(numbers)}
    if with_target:
        meta["target"] = target
    n = len(completions)
    return RewardBatch(
        questions=["q"] * n,
        completions=list(completions),
        answers=[str(target) if answer is None else answer] * n,
        completion_lengths=[10] * n,
        max_completion_length=100,
        metas=[meta] * n,
    )


def _answer(equation: str) -> str:
    return f"<think>\nreasoning\n</think>\n<answer>{equation}</answer>"


@pytest.mark.parametrize(
    "text, value",
    [
        ("1 + 2 * 3", Fraction(7)),
        ("(1 + 2) * 3", Fraction(9)),
        ("10 - 4 - 3", Fraction(3)),  # left-associative
        ("48 / 4 / 2", Fraction(6)),
        ("7 / 2", Fraction(7, 2)),  # exact, no float rounding
        ("-(3 - 10) * 2", Fraction(14)),
        ("((((5))))", Fraction(5)),
        ("2 * (3 + (4 - 1)) / 3", Fraction(4)),
        (".5 * 4", Fraction(2)),
    ],
)
def test_evaluate_equation_values(text, value):
    assert evaluate_equation(text) == value


@pytest.mark.parametrize(
    "text",
    ["2 ** 3", "2 3", "(1 + 2", "1 + 2)", "", "3 . 5", "__import__('os')", "1e5", "2(3)", "5 +"],
)
def test_evaluate_equation_rejects_malformed(text):
    with pytest.raises(EquationError):
        evaluate_equation(text)


def test_evaluate_equation_division_by_zero_and_length_limit():
    with pytest.raises(ZeroDivisionError):
        evaluate_equation("7 / (2 - 2)")
    with pytest.raises(EquationError, match="longer than"):
        evaluate_equation("1" + " + 1" * MAX_EQUATION_CHARS)


def test_equation_reward_cases():
    # numbers 3, 5, 7, target 22 = 3 * 5 + 7
    completions = [
        _answer("3 * 5 + 7"),  # correct
        _answer("(7 + 5) * 3 - 14"),  # 14 is not a given number
        _answer("3 * 5 + 7 + 3 - 3"),  # 3 reused
        _answer("3 * 7 + 1"),  # 5 missing (and 1 not given)
        _answer("3 + 5 + 7"),  # valid use, wrong value 15
        _answer("3 * 5 + 7 # x"),  # illegal character
        _answer("7 / (5 - 3)"),  # a division, value 3.5
        _answer("(3 * (5 + (7 - 0)))"),  # 0 not a given number
        _answer("((3 * 5) + (7))"),  # nested parentheses, correct
        "3 * 5 + 7",  # no <answer> tag
        _answer("  3*5+7  "),  # whitespace around is fine
    ]
    assert countdown_equation_reward(_batch(completions)) == [
        1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0
    ]


def test_equation_reward_division_by_zero_with_numbers_used_once():
    # numbers 4, 4, 2: "2 / (4 - 4)" uses each once but divides by zero
    batch = _batch([_answer("2 / (4 - 4)")], numbers=(4, 4, 2), target=1)
    assert countdown_equation_reward(batch) == [0.0]


def test_equation_reward_fraction_intermediate_and_target_from_answer():
    # 8 / 3 * 6 = 16 exactly, through a non-integer intermediate
    batch = _batch([_answer("8 / 3 * 6")], numbers=(8, 3, 6), target=16, with_target=False)
    assert countdown_equation_reward(batch) == [1.0]
    wrong = _batch([_answer("8 / 3 * 6")], numbers=(8, 3, 6), target=0, answer="17",
                   with_target=False)
    assert countdown_equation_reward(wrong) == [0.0]


def test_equation_reward_uses_last_answer_block_and_rejects_overlong():
    text = "<think>x</think><answer>3 + 5 + 7</answer> then <answer>3 * 5 + 7</answer>"
    assert countdown_equation_reward(_batch([text])) == [1.0]
    long_eq = "3 * 5 + 7" + " + 0 - 0" * 40
    batch = _batch([_answer(long_eq)], numbers=[3, 5, 7] + [0] * 80)  # right numbers, too long
    assert countdown_equation_reward(batch) == [0.0]


def test_equation_reward_requires_numbers_in_meta():
    batch = RewardBatch(questions=["q"], completions=[_answer("1")], answers=["1"],
                        completion_lengths=[1], max_completion_length=10)
    with pytest.raises(ValueError, match="meta\\['numbers'\\]"):
        countdown_equation_reward(batch)


def test_format_reward_cases():
    completions = [
        "<think>\nI add.\n</think>\n<answer>3 + 5</answer>",  # canonical
        "  <think>a</think><answer>b</answer>\n",  # whitespace around and between is fine
        "<think>a</think>\n\n<answer>b</answer>",
        "<answer>b</answer>",  # no think block
        "<think>a</think>",  # no answer block
        "<think>a</think> text <answer>b</answer>",  # text between blocks
        "<think>a</think><answer>b</answer> trailing",  # text after the answer
        "<answer>b</answer><think>a</think>",  # wrong order
        "<think>a<think>b</think><answer>c</answer>",  # nested think
        "<think>a</think><answer>b</answer><answer>c</answer>",  # two answers
        "preamble <think>a</think><answer>b</answer>",  # text before think
    ]
    assert countdown_format_reward(_batch(completions)) == [
        1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    ]


def test_generated_problems_are_valid_and_solved_by_their_own_expression():
    task = make_task("countdown", seed=3, train_size=1000, eval_size=50)
    records = task.dataset("train")[:300]
    batch = RewardBatch(
        questions=[r.question for r in records],
        completions=[_answer(r.meta["solution"]) for r in records],
        answers=[r.answer for r in records],
        completion_lengths=[1] * len(records),
        max_completion_length=100,
        metas=[r.meta for r in records],
    )
    assert countdown_equation_reward(batch) == [1.0] * len(records)
    for r in records:
        assert 3 <= len(r.meta["numbers"]) <= 4
        assert all(1 <= n <= 100 for n in r.meta["numbers"])
        assert r.answer == str(r.meta["target"]) and 1 <= r.meta["target"] <= 100
        assert evaluate_equation(r.meta["solution"]) == r.meta["target"]
        assert str(r.meta["numbers"]) in r.question and f"equals {r.answer}." in r.question
    assert len({r.answer for r in records}) > 20  # targets vary


def test_countdown_determinism_and_split_disjointness():
    a = make_task("countdown", seed=1, eval_size=100)
    b = make_task("countdown", seed=1, eval_size=100)
    c = make_task("countdown", seed=2, eval_size=100)
    assert a.dataset("train")[:50] == b.dataset("train")[:50]
    assert [r.meta for r in a.dataset("train")[:50]] != [r.meta for r in c.dataset("train")[:50]]
    puzzle = lambda r: (tuple(sorted(r.meta["numbers"])), r.meta["target"])  # noqa: E731
    train = {puzzle(r) for r in a.dataset("train")[:2000]}
    test = {puzzle(r) for r in a.dataset("test")}
    assert len(test) > 90 and not train & test


def test_countdown_task_prompt_and_reward_names():
    task = make_task("countdown")
    assert task.rule_rewards == ("countdown_format", "countdown_equation")
    assert task.correctness_reward == "countdown_equation"
    assert task.exemplars == ()
    assert "<think>" in task.system_prompt and "<answer>" in task.system_prompt


def test_countdown_from_local_file(tmp_path):
    path = tmp_path / "cd.jsonl"
    path.write_text('{"nums": [3, 5, 7], "target": 22}\n{"nums": [2, 9], "target": 18}\n')
    records = make_task("countdown", path=str(path)).dataset("train")
    assert [r.id for r in records] == ["cd:1", "cd:2"]
    assert records[1].meta == {"numbers": [2, 9], "target": 18} and records[1].answer == "18"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nums": [3, 5, 7], "target": 22}\n{"nums": [3, "x"], "target": 1}\n')
    with pytest.raises(
        ValueError, match=r"bad\.jsonl, line 2: field 'nums' must be a non-empty list"
    ):
        make_task("countdown", path=str(bad)).dataset("train")
