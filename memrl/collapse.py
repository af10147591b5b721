"""Training-collapse indicators over a run's per-step metrics (the records of ``metrics.jsonl``).

The paper (see docs/method.md, "Training collapse") describes the failure modes but gives
no thresholds; memrl flags them with these documented rules, all evaluated on per-step means
(``reward/<component>/mean``, ``completion/length/mean``, ``completion/clipped_frac``) over a
window of the last ``window`` training steps that log the keys:

* ``length_shortening`` — completions shrink (Qwen + R1 went to ~10 tokens, digits only):
  the window's mean completion length < ``short_length_tokens`` (20) tokens.
* ``length_lengthening`` — completions run into the cap (the Cosine baseline hit 200 tokens
  early): the window's mean ``completion/clipped_frac`` >= ``clipped_frac`` (0.95), or its mean
  length >= ``cap_fraction`` (0.95) x ``grpo.max_completion_length``.
* ``reward_mode`` — only the format rewards improve (Falcon3-1B + R1): the summed format rewards
  (xmlcount, soft_format, strict_format, integer, countdown_format — whichever are logged) rise
  by >= ``format_rise`` (0.1) from the first window to the last, while correctness rises by
  less than ``correctness_rise`` (0.02) (a fall counts as flat). Needs ``2 * window`` steps so
  the two windows do not overlap.
* ``correctness_zero`` — no correct answer at all: the correctness reward is 0 at every step of
  the last window.

Correctness is ``reward/correctness/mean``; runs without it (Countdown) use
``reward/countdown_equation/mean``, and runs without either use ``accuracy``. Both lists come
from the built-in tasks' rewards (``memrl.tasks.format_rewards`` / ``correctness_rewards``).
A rule with too few steps to evaluate is reported as skipped, never as healthy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memrl.tasks import correctness_rewards, format_rewards

LENGTH_SHORTENING = "length_shortening"
LENGTH_LENGTHENING = "length_lengthening"
REWARD_MODE = "reward_mode"
CORRECTNESS_ZERO = "correctness_zero"
RULES = (LENGTH_SHORTENING, LENGTH_LENGTHENING, REWARD_MODE, CORRECTNESS_ZERO)

RULE_TITLES = {
    LENGTH_SHORTENING: "length collapse (shortening)",
    LENGTH_LENGTHENING: "length collapse (lengthening)",
    REWARD_MODE: "reward-mode collapse",
    CORRECTNESS_ZERO: "correctness stuck at zero",
}

LENGTH_KEY = "completion/length/mean"
CLIPPED_KEY = "completion/clipped_frac"
# The tasks' own rewards: those judging the form (xmlcount, ..., countdown_format) and the
# correctness rewards (correctness, countdown_equation), in task order; then the run's accuracy.
FORMAT_COMPONENTS = format_rewards()
CORRECTNESS_KEYS = tuple(f"reward/{name}/mean" for name in correctness_rewards()) + ("accuracy",)


@dataclass(frozen=True)
class CollapseRules:
    """Thresholds of the collapse rules (defaults as documented in the module docstring)."""

    window: int = 10  # training steps per window
    short_length_tokens: float = 20.0
    clipped_frac: float = 0.95
    cap_fraction: float = 0.95
    format_rise: float = 0.1  # summed format reward, last window minus first window
    correctness_rise: float = 0.02

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"CollapseRules.window must be >= 1, got {self.window}")
        for name in ("clipped_frac", "cap_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"CollapseRules.{name} must be in (0, 1], got {value}")


@dataclass(frozen=True)
class CollapseFinding:
    """One rule that fired: which, over which training steps (inclusive), and the numbers."""

    rule: str
    first_step: int
    last_step: int
    values: dict[str, float] = field(default_factory=dict)
    detail: str = ""  # one sentence with the numbers and the threshold

    @property
    def title(self) -> str:
        return RULE_TITLES[self.rule]

    def describe(self) -> str:
        """``title, steps a-b: detail`` — what the report prints."""
        return f"{self.title}, steps {self.first_step}-{self.last_step}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the fields plus ``title`` and ``description`` (``describe()``)."""
        return {"rule": self.rule, "title": self.title, "first_step": self.first_step,
                "last_step": self.last_step, "values": dict(self.values), "detail": self.detail,
                "description": self.describe()}


@dataclass(frozen=True)
class RuleCheck:
    """The outcome of one rule: ``finding`` when it fired, ``skipped`` (the reason) when the
    run has too little data to evaluate it; both None means it was evaluated and did not fire."""

    rule: str
    finding: CollapseFinding | None = None
    skipped: str | None = None


def metric_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps (int64 [n]) and values (float64 [n]) of ``key`` over the records that log it.

    Records without the key, or with null (a non-finite value the writer dropped), are left out.
    A value that is not a number raises ValueError naming the step and key."""
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"metrics step {record.get('step')!r}: {key!r} is {value!r}, "
                             "not a number")
        if "step" not in record:
            raise ValueError(f"metrics record with {key!r} has no 'step': {dict(record)!r}")
        steps.append(int(record["step"]))
        values.append(float(value))
    return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def _summed_series(records: Sequence[Mapping[str, Any]],
                   keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-step sum of ``keys`` over the steps that log all of them."""
    columns = [dict(zip(*metric_series(records, key))) for key in keys]
    steps = sorted(set.intersection(*(set(c) for c in columns))) if columns else []
    total = [sum(c[s] for c in columns) for s in steps]
    return np.asarray(steps, dtype=np.int64), np.asarray(total, dtype=np.float64)


def correctness_key(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The first of ``CORRECTNESS_KEYS`` any record logs, or None."""
    for key in CORRECTNESS_KEYS:
        if metric_series(records, key)[0].size:
            return key
    return None


def format_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``reward/<component>/mean`` keys of ``FORMAT_COMPONENTS`` any record logs, in order."""
    keys = [f"reward/{name}/mean" for name in FORMAT_COMPONENTS]
    return [key for key in keys if metric_series(records, key)[0].size]


def describe_rules(rules: CollapseRules = CollapseRules()) -> dict[str, str]:
    """One sentence per rule (in ``RULES`` order) with its thresholds, for reports."""
    w = rules.window
    return {
        LENGTH_SHORTENING: f"mean completion length over the last {w} steps "
                           f"< {rules.short_length_tokens:g} tokens",
        LENGTH_LENGTHENING: f"over the last {w} steps, mean clipped fraction "
                            f">= {rules.clipped_frac:g} or mean length >= "
                            f"{rules.cap_fraction:.0%} of grpo.max_completion_length",
        REWARD_MODE: f"summed format rewards ({', '.join(FORMAT_COMPONENTS)}, those logged) rise "
                     f"by >= {rules.format_rise:g} from the first {w} steps to the last {w} while "
                     f"correctness rises by < {rules.correctness_rise:g}",
        CORRECTNESS_ZERO: f"correctness reward 0 at each of the last {w} steps",
    }


def _too_few(rule: str, what: str, have: int, need: int) -> RuleCheck:
    return RuleCheck(rule, skipped=f"needs {need} steps with {what}, the run has {have}")


def _check_shortening(records, rules: CollapseRules) -> RuleCheck:
    steps, lengths = metric_series(records, LENGTH_KEY)
    if steps.size < rules.window:
        return _too_few(LENGTH_SHORTENING, LENGTH_KEY, steps.size, rules.window)
    mean = float(lengths[-rules.window:].mean())
    if mean >= rules.short_length_tokens:
        return RuleCheck(LENGTH_SHORTENING)
    return RuleCheck(LENGTH_SHORTENING, CollapseFinding(
        LENGTH_SHORTENING, int(steps[-rules.window]), int(steps[-1]), {"mean_length": mean},
        f"mean completion length {mean:.1f} tokens < {rules.short_length_tokens:g}"))


def _check_lengthening(records, max_completion_length: int | None,
                       rules: CollapseRules) -> RuleCheck:
    clip_steps, clipped = metric_series(records, CLIPPED_KEY)
    len_steps, lengths = metric_series(records, LENGTH_KEY)
    usable_length = max_completion_length is not None and len_steps.size >= rules.window
    if clip_steps.size < rules.window and not usable_length:
        cap_note = "" if max_completion_length is not None else " (no length cap known)"
        return _too_few(LENGTH_LENGTHENING, f"{CLIPPED_KEY} or {LENGTH_KEY}{cap_note}",
                        max(clip_steps.size, len_steps.size), rules.window)
    values: dict[str, float] = {}
    reasons: list[str] = []
    ranges: list[tuple[int, int]] = []
    if clip_steps.size >= rules.window:
        frac = float(clipped[-rules.window:].mean())
        values["clipped_frac"] = frac
        if frac >= rules.clipped_frac:
            reasons.append(f"clipped fraction {frac:.2f} >= {rules.clipped_frac:g}")
            ranges.append((int(clip_steps[-rules.window]), int(clip_steps[-1])))
    if usable_length and max_completion_length is not None:
        mean = float(lengths[-rules.window:].mean())
        limit = rules.cap_fraction * max_completion_length
        values["mean_length"] = mean
        values["max_completion_length"] = float(max_completion_length)
        if mean >= limit:
            reasons.append(f"mean length {mean:.1f} tokens >= {rules.cap_fraction:.0%} of the "
                           f"{max_completion_length}-token cap")
            ranges.append((int(len_steps[-rules.window]), int(len_steps[-1])))
    if not reasons:
        return RuleCheck(LENGTH_LENGTHENING)
    first = min(r[0] for r in ranges)
    last = max(r[1] for r in ranges)
    return RuleCheck(LENGTH_LENGTHENING,
                     CollapseFinding(LENGTH_LENGTHENING, first, last, values, "; ".join(reasons)))


def _check_reward_mode(records, rules: CollapseRules) -> RuleCheck:
    fmt_keys = format_keys(records)
    corr_key = correctness_key(records)
    if not fmt_keys or corr_key is None:
        missing = "format rewards" if not fmt_keys else "a correctness metric"
        return RuleCheck(REWARD_MODE, skipped=f"the run logs no {missing}")
    need = 2 * rules.window
    fmt_steps, fmt = _summed_series(records, fmt_keys)
    corr_steps, corr = metric_series(records, corr_key)
    if min(fmt_steps.size, corr_steps.size) < need:
        return _too_few(REWARD_MODE, "format and correctness rewards",
                        min(fmt_steps.size, corr_steps.size), need)
    w = rules.window
    fmt_rise = float(fmt[-w:].mean() - fmt[:w].mean())
    corr_rise = float(corr[-w:].mean() - corr[:w].mean())
    if fmt_rise < rules.format_rise or corr_rise >= rules.correctness_rise:
        return RuleCheck(REWARD_MODE)
    names = ", ".join(k.split("/")[1] for k in fmt_keys)
    values = {"format_first": float(fmt[:w].mean()), "format_last": float(fmt[-w:].mean()),
              "format_rise": fmt_rise, "correctness_first": float(corr[:w].mean()),
              "correctness_last": float(corr[-w:].mean()), "correctness_rise": corr_rise}
    detail = (f"format rewards ({names}) rose {values['format_first']:.3f} -> "
              f"{values['format_last']:.3f} (+{fmt_rise:.3f} >= {rules.format_rise:g}) while "
              f"{corr_key} went {values['correctness_first']:.3f} -> "
              f"{values['correctness_last']:.3f} ({corr_rise:+.3f} < {rules.correctness_rise:g})")
    first = int(min(fmt_steps[0], corr_steps[0]))
    last = int(max(fmt_steps[-1], corr_steps[-1]))
    return RuleCheck(REWARD_MODE, CollapseFinding(REWARD_MODE, first, last, values, detail))


def _check_correctness_zero(records, rules: CollapseRules) -> RuleCheck:
    key = correctness_key(records)
    if key is None:
        return RuleCheck(CORRECTNESS_ZERO, skipped="the run logs no correctness metric")
    steps, corr = metric_series(records, key)
    if steps.size < rules.window:
        return _too_few(CORRECTNESS_ZERO, key, steps.size, rules.window)
    if np.any(corr[-rules.window:] != 0.0):
        return RuleCheck(CORRECTNESS_ZERO)
    return RuleCheck(CORRECTNESS_ZERO, CollapseFinding(
        CORRECTNESS_ZERO, int(steps[-rules.window]), int(steps[-1]), {"correctness_mean": 0.0},
        f"{key} is 0 at each of the last {rules.window} steps"))


def check_rules(records: Sequence[Mapping[str, Any]], max_completion_length: int | None = None,
                rules: CollapseRules = CollapseRules()) -> list[RuleCheck]:
    """Evaluate every rule (in ``RULES`` order) on a run's records.

    Args:
        records: one dict per step with ``step`` and metric keys (``read_metrics``); evaluation
            lines without training keys are ignored by every rule.
        max_completion_length: the completion cap in tokens (``grpo.max_completion_length``);
            None disables the mean-length half of the lengthening rule.
    """
    if max_completion_length is not None and max_completion_length <= 0:
        raise ValueError(f"max_completion_length must be positive, got {max_completion_length}")
    return [_check_shortening(records, rules),
            _check_lengthening(records, max_completion_length, rules),
            _check_reward_mode(records, rules),
            _check_correctness_zero(records, rules)]
