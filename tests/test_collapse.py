"""Collapse rules on synthetic per-step records: each rule fires on its pattern, with the numbers,
and a healthy run fires none."""

import pytest

from memrl.collapse import (
    CORRECTNESS_ZERO,
    LENGTH_LENGTHENING,
    LENGTH_SHORTENING,
    REWARD_MODE,
    CollapseRules,
    check_rules,
    metric_series,
)


def _run(n=30, *, length=100.0, clipped=0.1, correctness=0.3, xmlcount=0.2, integer=0.1,
         eval_lines=True):
    """Records of steps 1..n; each metric is a constant or a function of the step."""
    def at(value, step):
        return value(step) if callable(value) else value

    records = [{"step": 0, "eval/accuracy": 0.25}] if eval_lines else []
    for s in range(1, n + 1):
        records.append({
            "step": s,
            "completion/length/mean": at(length, s),
            "completion/clipped_frac": at(clipped, s),
            "reward/correctness/mean": at(correctness, s),
            "reward/xmlcount/mean": at(xmlcount, s),
            "reward/integer/mean": at(integer, s),
            "accuracy": at(correctness, s),
        })
    return records


def detect_collapse(records, cap, rules=CollapseRules()):
    """The findings of the rules that fired (what the report lists)."""
    return [c.finding for c in check_rules(records, cap, rules) if c.finding is not None]


def _rules_fired(records, cap=200):
    return [f.rule for f in detect_collapse(records, cap)]


def test_healthy_run_fires_no_rule_and_every_rule_is_evaluated():
    records = _run(correctness=lambda s: 0.1 + 0.01 * s, xmlcount=lambda s: 0.1 + 0.01 * s)
    checks = check_rules(records, 200)
    assert [c.rule for c in checks] == [LENGTH_SHORTENING, LENGTH_LENGTHENING, REWARD_MODE,
                                        CORRECTNESS_ZERO]
    assert all(c.finding is None and c.skipped is None for c in checks)
    assert detect_collapse(records, 200) == []


def test_shortening_fires_on_the_last_window_mean():
    records = _run(length=lambda s: 50.0 if s <= 20 else 8.0)
    [finding] = detect_collapse(records, 200)
    assert finding.rule == LENGTH_SHORTENING
    assert (finding.first_step, finding.last_step) == (21, 30)
    assert finding.values == {"mean_length": pytest.approx(8.0)}
    assert "8.0 tokens < 20" in finding.describe()


def test_shortening_threshold_is_strict():
    # Last window alternates 10 and 29 tokens: mean 19.5 < 20 fires; 10/30 (mean 20) does not.
    assert _rules_fired(_run(length=lambda s: 10.0 if s % 2 else 29.0)) == [LENGTH_SHORTENING]
    assert _rules_fired(_run(length=lambda s: 10.0 if s % 2 else 30.0)) == []


def test_lengthening_fires_on_clipped_fraction_even_without_a_cap():
    records = _run(length=60.0, clipped=lambda s: 0.96 if s > 20 else 0.2)
    for cap in (None, 200):
        [finding] = detect_collapse(records, cap)
        assert finding.rule == LENGTH_LENGTHENING
        assert (finding.first_step, finding.last_step) == (21, 30)
        assert finding.values["clipped_frac"] == pytest.approx(0.96)


def test_lengthening_fires_on_mean_length_near_the_cap():
    records = _run(length=195.0, clipped=0.5)
    [finding] = detect_collapse(records, 200)  # 195 >= 0.95 * 200 = 190
    assert finding.rule == LENGTH_LENGTHENING
    assert finding.values == {"clipped_frac": pytest.approx(0.5), "mean_length": 195.0,
                              "max_completion_length": 200.0}
    assert "195.0 tokens >= 95% of the 200-token cap" in finding.detail
    assert detect_collapse(records, 256) == []  # 195 < 243.2
    assert detect_collapse(records, None) == []


def test_reward_mode_fires_when_format_rises_and_correctness_stays_flat():
    # Format (xmlcount + integer): 0.1 + 0.0 over steps 1-10, 0.3 + 0.2 over steps 21-30 -> +0.4.
    records = _run(xmlcount=lambda s: 0.1 if s <= 10 else 0.3,
                   integer=lambda s: 0.0 if s <= 10 else 0.2,
                   correctness=lambda s: 0.06 if s <= 10 else 0.05)
    [finding] = detect_collapse(records, 200)
    assert finding.rule == REWARD_MODE
    assert (finding.first_step, finding.last_step) == (1, 30)
    assert finding.values == pytest.approx({
        "format_first": 0.1, "format_last": 0.5, "format_rise": 0.4,
        "correctness_first": 0.06, "correctness_last": 0.05, "correctness_rise": -0.01})
    assert "xmlcount, integer" in finding.detail


def test_reward_mode_does_not_fire_when_correctness_rises_too():
    records = _run(xmlcount=lambda s: 0.1 if s <= 10 else 0.5,
                   correctness=lambda s: 0.05 if s <= 10 else 0.08)  # +0.03 >= 0.02
    assert _rules_fired(records) == []


def test_reward_mode_uses_countdown_rewards_when_there_is_no_correctness_component():
    records = [{"step": s, "reward/countdown_format/mean": 0.2 if s <= 10 else 0.9,
                "reward/countdown_equation/mean": 0.01, "completion/length/mean": 50.0}
               for s in range(1, 31)]
    [finding] = detect_collapse(records, 100)
    assert finding.rule == REWARD_MODE
    assert finding.values["format_rise"] == pytest.approx(0.7)
    assert "reward/countdown_equation/mean" in finding.detail


def test_correctness_stuck_at_zero():
    [finding] = detect_collapse(_run(correctness=0.0), 200)
    assert finding.rule == CORRECTNESS_ZERO
    assert (finding.first_step, finding.last_step) == (21, 30)
    one_correct = _run(correctness=lambda s: 0.015625 if s == 25 else 0.0)
    assert _rules_fired(one_correct) == []


def test_short_run_skips_every_rule_with_a_reason():
    checks = check_rules(_run(n=5), 200)
    assert all(c.finding is None for c in checks)
    reasons = {c.rule: c.skipped for c in checks}
    assert reasons[LENGTH_SHORTENING] == \
        "needs 10 steps with completion/length/mean, the run has 5"
    assert reasons[REWARD_MODE] == \
        "needs 20 steps with format and correctness rewards, the run has 5"
    # 15 steps: enough for the last-window rules, not for two disjoint windows.
    skipped = [c.rule for c in check_rules(_run(n=15), 200) if c.skipped]
    assert skipped == [REWARD_MODE]


def test_custom_rules_change_the_window_and_threshold():
    records = _run(length=lambda s: 50.0 if s <= 25 else 15.0)
    assert _rules_fired(records) == []  # last 10 steps: (5 * 50 + 5 * 15) / 10 = 32.5
    rules = CollapseRules(window=5, short_length_tokens=16.0)
    [finding] = detect_collapse(records, 200, rules)
    assert (finding.first_step, finding.last_step, finding.values["mean_length"]) == (26, 30, 15.0)


def test_missing_and_null_values_are_skipped_and_bad_ones_named():
    steps, values = metric_series([{"step": 1, "train/kl": 0.5}, {"step": 2},
                                   {"step": 3, "train/kl": None}, {"step": 4, "train/kl": 2}],
                                  "train/kl")
    assert steps.tolist() == [1, 4] and values.tolist() == [0.5, 2.0]
    with pytest.raises(ValueError, match=r"step 7: 'train/kl' is 'nan\?'"):
        metric_series([{"step": 7, "train/kl": "nan?"}], "train/kl")


def test_rules_validate_their_thresholds():
    with pytest.raises(ValueError, match="window"):
        CollapseRules(window=0)
    with pytest.raises(ValueError, match="clipped_frac"):
        CollapseRules(clipped_frac=1.5)
    with pytest.raises(ValueError, match="max_completion_length"):
        check_rules(_run(), 0)
