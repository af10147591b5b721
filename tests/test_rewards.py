"""Rule rewards, cosine length reward and the reward registry, against hand-computed values."""

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest

from memrl.rewards.batch import RewardBatch
from memrl.rewards.length import cosine_length_reward
from memrl.rewards.registry import (
    BUILTIN_REWARDS,
    RewardComposer,
    RewardError,
    RewardSpec,
    resolve_reward,
)
from memrl.rewards.rule import (
    correctness_reward,
    integer_reward,
    soft_format_reward,
    strict_format_reward,
    xmlcount_reward,
)
from memrl.rewards.total import EXPLOIT, EXPLORE, total_reward


def make_batch(completions, answers=None, lengths=None, max_len=200, metas=()):
    n = len(completions)
    return RewardBatch(
        questions=[f"q{i}" for i in range(n)],
        completions=list(completions),
        answers=list(answers) if answers is not None else ["4"] * n,
        completion_lengths=list(lengths) if lengths is not None else [10] * n,
        max_completion_length=max_len,
        metas=metas,
    )


# Reference texts and their rule rewards, computed by hand from the spec's definitions.
WELL_FORMED = "<reasoning>\n2+2=4\n</reasoning>\n<answer>\n4\n</answer>\n"
MULTI_LINE = "<reasoning>\nStep one.\nStep two.\n</reasoning>\n<answer>\n4\n</answer>\n"
TRAILING = "<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>\nextra"
EXTRA_NEWLINE = "<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>\n\n"
NO_FINAL_NEWLINE = "<reasoning>\nr\n</reasoning>\n<answer>\n4\n</answer>"  # 47 characters
MISSING_TAGS = "The answer is 4"
DUPLICATED = "<reasoning>\na\n</reasoning>\n<answer>\n1\n</answer>\n<answer>\n4\n</answer>\n"
ONE_LINE = "<reasoning>think</reasoning> <answer>4</answer>"
TEXTS = [WELL_FORMED, MULTI_LINE, TRAILING, EXTRA_NEWLINE, NO_FINAL_NEWLINE, MISSING_TAGS,
         DUPLICATED, ONE_LINE]

# xmlcount: 4 × 0.125 minus the trailing-character penalties.
#   TRAILING: "extra" after "\n</answer>\n" (−0.005),
#     "\nextra" after "\n</answer>" (−(6−1)/1000)
#   EXTRA_NEWLINE: "\n" (−0.001) and "\n\n" (−(2−1)/1000)
#   NO_FINAL_NEWLINE: no "\n</answer>\n", so the whole 47-character text counts (−0.047);
#     nothing after "\n</answer>" gives −(0−1)/1000 = +0.001
#   DUPLICATED: the two answer tags appear twice, only the reasoning tags score
XMLCOUNT = [0.5, 0.5, 0.49, 0.498, 0.454, 0.0, 0.25, 0.0]
STRICT = [0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]  # "$" also matches before a final "\n"
SOFT = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]  # "." never crosses the newline after <reasoning>
INTEGER = [0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5]  # MISSING_TAGS: whole text is the answer
CORRECT_EXACT = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]  # DUPLICATED: the last answer is "4"


def test_rule_rewards_reference_values():
    batch = make_batch(TEXTS)
    assert xmlcount_reward(batch) == pytest.approx(XMLCOUNT, abs=1e-12)
    assert strict_format_reward(batch) == STRICT
    assert soft_format_reward(batch) == SOFT
    assert integer_reward(batch) == INTEGER
    assert correctness_reward(batch) == CORRECT_EXACT


def test_integer_reward_uses_isdigit():
    batch = make_batch(["<answer>-3</answer>", "<answer>12.5</answer>", "<answer> 42 </answer>",
                        "<answer></answer>"])
    assert integer_reward(batch) == [0.0, 0.0, 0.5, 0.0]


def test_correctness_modes():
    completions = [
        "<answer>\n72.0\n</answer>",  # exact: "72.0" != "72"; math: equal
        "so the answer is \\boxed{72}",  # no answer tag: math mode reads the box
        "<answer>\n\n</answer> \\boxed{72}",  # empty answer: math mode reads the box
        "<answer>\n\\frac{144}{2}\n</answer>",
        "<answer>\n71\n</answer>",
    ]
    batch = make_batch(completions, answers=["72"] * 5)
    assert correctness_reward(batch, mode="exact") == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert correctness_reward(batch, mode="math") == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert correctness_reward(make_batch(["<answer> 72 </answer>"], answers=[" 72"])) == [1.0]


def test_cosine_default_measures_tokens_and_clips():
    # Tokens L of a 200-token budget: p = L/200 clipped to [0, 1].
    lengths = [0, 100, 200, 400]
    batch = make_batch(["x"] * 4, lengths=lengths, max_len=200)
    right = cosine_length_reward(batch, correct=[True] * 4)
    wrong = cosine_length_reward(batch, correct=[False] * 4)
    # correct: 0.5 + 0.25·(1 + cos pπ) → 1.0, 0.75, 0.5, 0.5 (clipped)
    assert right == pytest.approx([1.0, 0.75, 0.5, 0.5], abs=1e-12)
    # wrong: −0.5 − 0.25·(1 + cos pπ) → −1.0, −0.75, −0.5, −0.5
    assert wrong == pytest.approx([-1.0, -0.75, -0.5, -0.5], abs=1e-12)


def test_cosine_reference_measures_characters_without_clipping():
    # Budget 10 "tokens", lengths in characters: 0, 5, 10, 20 (= 2 × budget: back to the p=0 value)
    batch = make_batch(["", "a" * 5, "a" * 10, "a" * 20], lengths=[999] * 4, max_len=10)
    assert cosine_length_reward(batch, correct=[True] * 4, reference=True) == pytest.approx(
        [1.0, 0.75, 0.5, 1.0], abs=1e-12
    )
    assert cosine_length_reward(batch, correct=[False] * 4, reference=True) == pytest.approx(
        [-1.0, -0.75, -0.5, -1.0], abs=1e-12
    )
    # p = 2.5 gives cos(2.5π) = 0, the same as p = 0.5
    quarter = make_batch(["a" * 25], max_len=10)
    assert cosine_length_reward(quarter, correct=[True], reference=True) == pytest.approx([0.75])


def test_cosine_computes_correctness_when_not_given():
    # "<answer>\n4\n</answer>" is 20 characters: p = 2 in reference mode with a budget of 10.
    batch = make_batch(["<answer>\n4\n</answer>", "<answer>\n5\n</answer>"], answers=["4", "4"],
                       lengths=[5, 5], max_len=10)
    assert cosine_length_reward(batch, reference=True) == pytest.approx([1.0, -1.0])
    assert cosine_length_reward(batch) == pytest.approx([0.75, -0.75])  # 5 of 10 tokens
    with pytest.raises(ValueError, match="correct has 1 entries, expected 2"):
        cosine_length_reward(batch, correct=[True])


def test_builtin_names():
    assert set(BUILTIN_REWARDS) == {
        "correctness", "integer", "strict_format", "soft_format", "xmlcount", "cosine_length",
        "countdown_format", "countdown_equation",
    }
    assert resolve_reward("xmlcount") is xmlcount_reward
    assert resolve_reward("memrl.rewards.rule:integer_reward") is integer_reward


def test_countdown_rewards_resolve_lazily():
    if importlib.util.find_spec("memrl.rewards.countdown") is None:
        with pytest.raises(ValueError, match="memrl.rewards.countdown"):
            resolve_reward("countdown_format")
    else:
        assert resolve_reward("countdown_format").__name__ == "countdown_format_reward"
        assert resolve_reward("countdown_equation").__name__ == "countdown_equation_reward"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("correctnes", "expected a built-in reward name"),
        ("memrl.no_such_module:fn", "module 'memrl.no_such_module' not found"),
        ("memrl.rewards.rule:no_such_fn", "has no attribute 'no_such_fn'"),
        ("memrl.rewards.rule:_STRICT_FORMAT", "not a callable"),
        (":fn", "expected a built-in reward name"),
    ],
)
def test_resolve_reward_errors(name, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_reward(name)
    assert repr(name) in str(info.value)


def test_composer_weights_and_extra_components():
    completions = [WELL_FORMED, TRAILING.replace("4", "5")]
    batch = make_batch(completions, answers=["4", "4"])
    composer = RewardComposer([
        RewardSpec("correctness", 1.0),
        RewardSpec("xmlcount", weight=0.5),
        RewardSpec("integer", weight=2.0),
        RewardSpec("correctness", weight=-1.0, kwargs={"mode": "math"}, name="math_correct"),
    ])
    scores = composer.score(batch)
    assert list(scores.components) == ["correctness", "xmlcount", "integer", "math_correct"]
    assert scores.components["correctness"].dtype == np.float64
    np.testing.assert_allclose(scores.components["xmlcount"], [0.5, 0.49])
    np.testing.assert_array_equal(scores.components["integer"], [0.5, 0.5])
    # 1·correct + 0.5·xml + 2·integer − 1·correct(math)
    expected = np.array([1 + 0.25 + 1.0 - 1, 0 + 0.245 + 1.0 - 0])
    assert scores.weights == {"correctness": 1.0, "xmlcount": 0.5, "integer": 2.0, "math_correct": -1.0}
    np.testing.assert_allclose(total_reward(scores.components, scores.weights).total, expected)
    with_exploit = total_reward(scores.components, scores.weights, exploit=[0.2, -0.4],
                                lambda_exploit=0.5)
    np.testing.assert_allclose(with_exploit.total, expected + [0.1, -0.2])
    assert with_exploit.weights[EXPLOIT] == 0.5
    np.testing.assert_array_equal(with_exploit.components[EXPLOIT], [0.2, -0.4])  # unweighted
    with pytest.raises(ValueError, match="'memory_exploit' is already"):
        total_reward({EXPLOIT: [0.0, 0.0]}, {EXPLOIT: 1.0}, exploit=[0.0, 0.0], lambda_exploit=1.0)


def test_composer_config_errors():
    with pytest.raises(ValueError, match="configured twice"):
        RewardComposer([RewardSpec("xmlcount", 1.0), RewardSpec("xmlcount", weight=2.0)])
    with pytest.raises(ValueError, match="'integer': arguments {'mode': 'math'} do not fit"):
        RewardComposer([RewardSpec("integer", 1.0, kwargs={"mode": "math"})])
    with pytest.raises(ValueError, match="weight must be a finite number, got nan"):
        RewardComposer([RewardSpec("integer", weight=math.nan)])


def _explodes_on_boom(batch, **kwargs):
    if any("boom" in text for text in batch.completions):
        raise KeyError("no digit")
    return [0.0] * len(batch)


def _fails_on_pairs(batch, **kwargs):
    if len(batch) > 1:
        raise RuntimeError("needs one sample")
    return [0.0]


def _returns(values):
    return lambda batch, **kwargs: values


def test_raising_reward_names_the_sample(monkeypatch):
    monkeypatch.setitem(BUILTIN_REWARDS, "explodes", _explodes_on_boom)
    batch = make_batch(["fine", "fine too", "it goes boom here"])
    with pytest.raises(RewardError) as info:
        RewardComposer([RewardSpec("explodes", 1.0)]).score(batch)
    message = str(info.value)
    assert "'explodes'" in message and "KeyError" in message
    assert "sample 2" in message and "'it goes boom here'" in message and "'q2'" in message
    assert isinstance(info.value.__cause__, KeyError)


def test_batch_level_failure_is_reported_as_such():
    spec = RewardSpec(f"{__name__}:_fails_on_pairs", 1.0)
    with pytest.raises(RewardError, match="no single sample raises alone"):
        RewardComposer([spec]).score(make_batch(["a", "b"]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0], "returned 1 values for 2 samples"),
        ([1.0, float("nan")], "returned nan at index 1"),
        ([float("inf"), 0.0], "returned inf at index 0"),
        ([1.0, "0.5"], "non-number at index 1: '0.5'"),
        ([None, 1.0], "non-number at index 0: None"),
        (0.5, "returned a float, expected a list of 2 floats"),
        (np.array([1.0, np.nan]), "returned nan at index 1"),
    ],
)
def test_bad_reward_values(monkeypatch, values, message):
    monkeypatch.setitem(BUILTIN_REWARDS, "bad", _returns(values))
    with pytest.raises(RewardError, match=message) as info:
        RewardComposer([RewardSpec("bad", 1.0)]).score(make_batch(["a", "b"]))
    assert "'bad'" in str(info.value)


def test_total_reward_validates_values():
    rule, weights = {"correctness": np.zeros(2)}, {"correctness": 1.0}
    with pytest.raises(RewardError, match="'memory_explore' returned nan at index 0"):
        total_reward(rule, weights, explore=[math.nan, 0.0], lambda_explore=1.0)
    with pytest.raises(RewardError, match="'memory_explore' returned 3 values for 2 samples"):
        total_reward(rule, weights, explore=[0.0, 0.0, 0.0], lambda_explore=1.0)
    with pytest.raises(ValueError, match="memory_explore given without memory.lambda_explore"):
        total_reward(rule, weights, explore=[0.0, 0.0])
    with pytest.raises(ValueError, match="weight must be a finite number, got nan"):
        total_reward(rule, weights, exploit=[0.0, 0.0], lambda_exploit=math.nan)
    with pytest.raises(ValueError, match="differ"):
        total_reward(rule, {"xmlcount": 1.0})
    with pytest.raises(ValueError, match="no rule reward"):
        total_reward({}, {})
    assert total_reward(rule, weights).total.tolist() == [0.0, 0.0]


def test_total_reward_is_the_formula():
    """R = Σᵢ wᵢ·rᵢ + λ_s·R̂_exploit + λ_e·R̂_explore, each term once, components unweighted."""
    rule = {"correctness": [1.0, 0.0], "xmlcount": [0.5, 0.25]}
    weights = {"correctness": 1.0, "xmlcount": 2.0}
    reward = total_reward(rule, weights, exploit=[1.0, 0.2], lambda_exploit=0.5,
                          explore=[0.5, 1.0], lambda_explore=2.0)
    # [1 + 2·0.5 + 0.5·1 + 2·0.5, 0 + 2·0.25 + 0.5·0.2 + 2·1]
    np.testing.assert_allclose(reward.total, [3.5, 2.6])
    assert list(reward.components) == ["correctness", "xmlcount", EXPLOIT, EXPLORE]
    assert reward.weights == {"correctness": 1.0, "xmlcount": 2.0, EXPLOIT: 0.5, EXPLORE: 2.0}
    np.testing.assert_array_equal(reward.components[EXPLORE], [0.5, 1.0])
    assert all(v.dtype == np.float64 for v in [reward.total, *reward.components.values()])


def test_registry_does_not_import_countdown_eagerly():
    # In a fresh interpreter: this one may have imported the countdown rewards already.
    probe = ("import sys; from memrl.rewards.registry import resolve_reward; "
             "assert 'memrl.rewards.countdown' not in sys.modules, 'imported with the registry'; "
             "fn = resolve_reward('countdown_format'); "
             "assert fn.__module__ == 'memrl.rewards.countdown', fn; "
             "assert 'memrl.rewards.countdown' in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
