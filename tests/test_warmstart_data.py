"""The tiny base model's warm-start demonstrations: the answer format, or free text by share."""

import pytest

from memrl.model.recipe import warmstart_completions
from memrl.rewards.batch import RewardBatch
from memrl.rewards.rule import correctness_reward, strict_format_reward
from memrl.tasks import make_task

TASK = make_task("arith", seed=0)
RECORDS = [TASK.dataset("train")[i] for i in range(400)]


def _scores(completions: list[str], fn, **kwargs) -> list[float]:
    batch = RewardBatch(questions=[r.question for r in RECORDS[:len(completions)]],
                        completions=completions,
                        answers=[r.answer for r in RECORDS[:len(completions)]],
                        completion_lengths=[10] * len(completions), max_completion_length=64)
    return fn(batch, **kwargs)


def test_tagged_demonstration_earns_full_format_and_exact_correctness():
    texts = [TASK.demonstration(r) for r in RECORDS[:20]]
    assert _scores(texts, strict_format_reward) == [0.5] * 20
    assert _scores(texts, correctness_reward, mode="exact") == [1.0] * 20


def test_free_text_demonstration_has_the_solution_but_no_tags():
    record = RECORDS[0]
    text = TASK.demonstration(record, free_text=True)
    assert text == f"{record.meta['solution']}\n#### {record.answer}"
    assert "<answer>" not in text and "<reasoning>" not in text
    # The paper's exact check reads the whole untagged text, so it is never correct.
    assert _scores([text], correctness_reward, mode="exact") == [0.0]


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (1.0, 400)])
def test_fraction_zero_and_one_are_all_or_nothing(fraction, expected):
    texts = warmstart_completions(TASK, RECORDS, fraction, seed=0)
    assert len(texts) == len(RECORDS)
    assert sum("<answer>" not in t for t in texts) == expected


def test_half_free_text_is_about_half_and_fixed_by_the_seed():
    texts = warmstart_completions(TASK, RECORDS, 0.5, seed=0)
    free = ["<answer>" not in t for t in texts]
    assert 160 <= sum(free) <= 240
    assert texts == warmstart_completions(TASK, RECORDS, 0.5, seed=0)
    assert texts != warmstart_completions(TASK, RECORDS, 0.5, seed=1)
    # A higher fraction turns more demonstrations into free text, never fewer: the draws are
    # shared, so the free-text set at 0.3 is contained in the one at 0.5.
    smaller = ["<answer>" not in t for t in warmstart_completions(TASK, RECORDS, 0.3, seed=0)]
    assert all(f for s, f in zip(smaller, free) if s) and sum(smaller) < sum(free)


def test_direct_demonstration_is_tagged_with_no_working():
    record = RECORDS[0]
    text = TASK.demonstration(record, direct=True)
    assert text == f"<reasoning>\nThe answer is {record.answer}.\n</reasoning>\n<answer>\n{record.answer}\n</answer>\n"
    assert _scores([text], strict_format_reward) == [0.5]
    assert _scores([text], correctness_reward, mode="exact") == [1.0]
    with pytest.raises(ValueError, match="either free text or direct"):
        TASK.demonstration(record, free_text=True, direct=True)


def test_countdown_has_no_direct_demonstration():
    countdown = make_task("countdown", seed=0)
    with pytest.raises(ValueError, match="direct demonstrations"):
        countdown.demonstration(countdown.dataset("train")[0], direct=True)


def test_habit_stage_demonstrations_follow_the_direct_share(tmp_path):
    from memrl.config import load_config
    from memrl.model.recipe import tiny_base_recipe
    from memrl.tasks import build_task

    cfg = load_config(None, ["model.tiny.warmstart_examples=300", "model.tiny.habit_steps=10",
                             "model.tiny.habit_direct_fraction=0.8"])
    recipe = tiny_base_recipe(cfg, build_task(cfg))
    first, habit = recipe.examples(), recipe.habit_examples()
    assert len(first) == len(habit) == 300
    assert not any("The answer is" in c for _, c in first)  # the first stage only shows the working
    direct = sum(c.startswith("<reasoning>\nThe answer is") for _, c in habit)
    assert 210 <= direct <= 270
    # The stages use different records, and the spec (the cache key) names the second stage.
    # (Small numbers make some questions recur across records, so a few may coincide.)
    shared = {m[-1]["content"] for m, _ in first} & {m[-1]["content"] for m, _ in habit}
    assert len(shared) < 15
    assert recipe.spec["habit"]["steps"] == 10 and recipe.spec["data"]["habit_direct_fraction"] == 0.8
    # The tokenizer's text is the same whatever share answers directly (so is the first stage).
    other = load_config(None, ["model.tiny.warmstart_examples=300", "model.tiny.habit_steps=10",
                               "model.tiny.habit_direct_fraction=0.3"])
    assert tiny_base_recipe(other, build_task(other)).texts() == recipe.texts()
    plain_cfg = load_config(None, ["model.tiny.warmstart_examples=300", "model.tiny.habit_steps=0"])
    plain = tiny_base_recipe(plain_cfg, build_task(plain_cfg))
    assert plain.habit_examples is None and "habit" not in plain.spec
