"""What each report plot shows: one ``Topic`` per PNG, one ``Panel`` per subplot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memrl.collapse import (
    CLIPPED_KEY,
    CORRECTNESS_KEYS,
    CORRECTNESS_ZERO,
    FORMAT_COMPONENTS,
    LENGTH_KEY,
    LENGTH_LENGTHENING,
    LENGTH_SHORTENING,
    REWARD_MODE,
    CollapseRules,
)
from memrl.report.runs import Run

# Components in the order the paper discusses them; unknown ones follow, sorted.
_REWARD_ORDER = ("total", "correctness", "integer", "strict_format", "soft_format", "xmlcount",
                 "cosine_length", "countdown_format", "countdown_equation", "memory_exploit",
                 "memory_explore", "random_bonus", "intrinsic")
_MEMORY_SIZES = ("memory/success_keys", "memory/success_values", "memory/failure_keys",
                 "memory/failure_values")
_MEMORY_REWARDS = ("memory/exploit_mean", "memory/explore_mean", "reward/memory_exploit/mean",
                   "reward/memory_explore/mean")
_TIME_PHASES = ("time/generate", "time/score", "time/memory", "time/reference", "time/train",
                "time/sync", "time/step")


@dataclass(frozen=True)
class Panel:
    """One subplot: ``key`` as a line per run; ``points`` (evaluation) as markers per run."""

    key: str
    smooth: bool = True
    points: str | None = None
    guides: tuple[float, ...] = ()  # grey dotted reference lines (collapse thresholds)
    cap_line: bool = False  # the runs' grpo.max_completion_length, grey dashed
    shade: tuple[str, ...] = ()  # collapse rules whose fired step ranges are shaded here

    def metric_keys(self) -> tuple[str, ...]:
        return (self.key,) if self.points is None else (self.key, self.points)


@dataclass(frozen=True)
class Topic:
    """One PNG of the report."""

    name: str  # the PNG's stem
    title: str
    panels: tuple[Panel, ...]
    absent: str  # what the summary says when no run logs the topic
    by_run: bool = False  # one subplot per run, one line per panel key (time per phase)

    def metric_keys(self) -> tuple[str, ...]:
        return tuple(k for p in self.panels for k in p.metric_keys())


_CORRECTNESS_SHADE = (REWARD_MODE, CORRECTNESS_ZERO)
# Reward panels on which a collapse rule's span is shaded: the signals the rule reads.
_REWARD_SHADES = {
    **{f"reward/{name}/mean": (REWARD_MODE,) for name in FORMAT_COMPONENTS},
    **{key: _CORRECTNESS_SHADE for key in CORRECTNESS_KEYS if key.startswith("reward/")},
}


def _reward_keys(runs: Sequence[Run]) -> list[str]:
    names = {k.split("/")[1] for run in runs for r in run.records for k in r
             if k.startswith("reward/") and k.endswith("/mean") and k.count("/") == 2}
    ordered = [n for n in _REWARD_ORDER if n in names] + sorted(names - set(_REWARD_ORDER))
    return [f"reward/{n}/mean" for n in ordered]


def report_topics(runs: Sequence[Run], rules: CollapseRules) -> list[Topic]:
    """The report's plots, in order; the reward panels are the components ``runs`` log."""
    return [
        Topic("accuracy", "Accuracy: training completions (line), evaluation (markers)",
              (Panel("accuracy", points="eval/accuracy", shade=_CORRECTNESS_SHADE),),
              "no run logs accuracy or eval/accuracy"),
        Topic("rewards", "Reward components (per-step mean)",
              tuple(Panel(k, shade=_REWARD_SHADES.get(k, ())) for k in _reward_keys(runs)),
              "no run logs reward/*/mean"),
        Topic("length", "Completion length (tokens) and fraction clipped at the cap",
              (Panel(LENGTH_KEY, guides=(rules.short_length_tokens,), cap_line=True,
                     shade=(LENGTH_SHORTENING, LENGTH_LENGTHENING)),
               Panel(CLIPPED_KEY, guides=(rules.clipped_frac,), shade=(LENGTH_LENGTHENING,))),
              "no run logs completion/length/mean or completion/clipped_frac"),
        Topic("kl", "KL divergence to the reference policy", (Panel("train/kl"),),
              "no run logs train/kl"),
        Topic("memory", "Episodic memory: sizes and intrinsic rewards",
              tuple(Panel(k, smooth=False) for k in _MEMORY_SIZES)
              + tuple(Panel(k) for k in _MEMORY_REWARDS),
              "no run logs memory/* or reward/memory_* keys (memory methods only)"),
        Topic("time", "Seconds per step by phase (phases overlap, so they are not stacked)",
              tuple(Panel(k) for k in _TIME_PHASES), "no run logs time/*", by_run=True),
        Topic("throughput", "Throughput (tokens per second)",
              (Panel("throughput/tokens_per_s"), Panel("throughput/generate_tokens_per_s")),
              "no run logs throughput/*"),
    ]
