"""``memrl audit RUN_DIR``: every scheduled prompt trained exactly once, in order, proven from
the run's prompt ledger (:mod:`memrl.ledger`) against an independent replay of its prompt stream.

The replay is built from the run's ``config.yaml`` alone (the task, its train split, the seed,
``grpo.prompts_per_step``), never from the run's own stream state or checkpoints, so a run that
lost its data position on resume cannot vouch for itself. The committed steps are those the
ledger records (1 to its last step): a finished run, an interrupted one (up to the last step it
committed) and one resumed any number of times are audited the same way.

Step ``s`` schedules the stream's prompts ``(s − 1)·P`` to ``s·P − 1``. Each ledger entry is
checked, and each finding is counted in prompts, with the first step it shows at:

- **lost**: a scheduled prompt that no entry trained on;
- **duplicated**: an entry that trains a prompt already trained (by an earlier step, or twice
  in one step);
- **out of order**: a prompt trained at another step than its scheduled one, or by a line whose
  step number is lower than an earlier line's;
- **stale**: a prompt with a completion whose weight version is not within the allowed lag of
  the weights the step trained (version ``s − 1``): ``rollout.max_staleness`` versions in async
  mode, 0 in sync mode (and never newer);
- **wrong count**: an entry whose learners received other than ``grpo.num_generations``
  completions, or trained on other than all of them (or none, for a filtered group);
- **outside schedule**: an entry for a prompt no committed step scheduled (another task or
  split, an unknown place, an id the replay puts elsewhere).

An entry *trains* its prompt when a completion entered the loss, or when the driver filtered
the group for zero reward variance (``grpo.filter_zero_variance``; ``filtered`` and all
completions received): such a group was trained on by design, with nothing to learn from, and
is not lost. An entry whose completions never reached the learners (``received`` 0) trains
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from memrl.config import load_config
from memrl.errors import InputError
from memrl.ledger import LedgerEntry, LedgerLine, PromptId, read_ledger
from memrl.run_dir import RunDir
from memrl.tasks import build_task
from memrl.train.data_stream import TRAIN_SPLIT, PromptStream

LOST, DUPLICATED, OUT_OF_ORDER, STALE, WRONG_COUNT, OUTSIDE = (
    "lost", "duplicated", "out_of_order", "stale", "wrong_count", "outside_schedule")
KINDS: tuple[str, ...] = (LOST, DUPLICATED, OUT_OF_ORDER, STALE, WRONG_COUNT, OUTSIDE)
TITLES = {LOST: "lost", DUPLICATED: "duplicated", OUT_OF_ORDER: "out of order", STALE: "stale",
          WRONG_COUNT: "wrong count", OUTSIDE: "outside schedule"}


class AuditInputError(InputError):
    """A run directory the audit cannot read (the message names the file)."""

    label = "cannot audit"
    hint = "give the output_dir of a memrl train run (it holds config.yaml and ledger.jsonl)"


@dataclass(frozen=True)
class AuditResult:
    """The audit of one ledger: ``steps`` committed, ``scheduled`` prompts they scheduled,
    ``counts[kind]`` prompts found and ``first_step[kind]`` (None when 0) per kind of
    :data:`KINDS`; the settings it checked against."""

    steps: int
    scheduled: int
    counts: dict[str, int]
    first_step: dict[str, int | None]
    num_generations: int
    max_lag: int

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "clean": self.clean}


class _Findings:
    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.first: dict[str, int | None] = dict.fromkeys(KINDS)

    def add(self, kind: str, step: int) -> None:
        self.counts[kind] += 1
        first = self.first[kind]
        self.first[kind] = step if first is None else min(first, step)


def _count_ok(entry: LedgerEntry, num_generations: int) -> bool:
    if entry.received == 0 and entry.trained == 0:
        return True  # never reached the learners: lost (unless trained elsewhere), not miscounted
    expected = 0 if entry.filtered else num_generations
    return entry.received == num_generations and entry.trained == expected


def _trains(entry: LedgerEntry) -> bool:
    return entry.trained > 0 or (entry.filtered and entry.received > 0)


def audit_ledger(lines: Sequence[LedgerLine], schedule: Sequence[Sequence[PromptId]], *, task: str,
                 split: str, num_generations: int, max_lag: int) -> AuditResult:
    """Audit ``lines`` (a ledger, in file order) against ``schedule[s − 1]``, the prompts that
    step ``s`` schedules, for every committed step ``s`` (see the module docstring)."""
    scheduled = {(p.epoch, p.index): (step, p.id)
                 for step, prompts in enumerate(schedule, start=1) for p in prompts}
    found = _Findings()
    trained: set[tuple[int, int]] = set()
    highest = 0
    for line in lines:
        behind = line.step < highest  # this line came after a later step's
        highest = max(highest, line.step)
        for entry in line.prompts:
            if not _count_ok(entry, num_generations):
                found.add(WRONG_COUNT, line.step)
            if not _trains(entry):
                continue
            key = (entry.epoch, entry.index) if entry.epoch is not None and entry.index is not None else None
            place = scheduled.get(key) if key is not None and (line.task, line.split) == (task, split) else None
            if key is None or place is None or place[1] != entry.id:
                found.add(OUTSIDE, line.step)
                continue
            if any(not 0 <= line.step - 1 - version <= max_lag for version in entry.versions):
                found.add(STALE, line.step)
            if key in trained:
                found.add(DUPLICATED, line.step)
                continue
            trained.add(key)
            if place[0] != line.step or behind:
                found.add(OUT_OF_ORDER, line.step)
    for key, (step, _) in scheduled.items():
        if key not in trained:
            found.add(LOST, step)
    return AuditResult(steps=len(schedule), scheduled=len(scheduled), counts=found.counts,
                       first_step=found.first, num_generations=num_generations, max_lag=max_lag)


def audit_run(run_dir: str | Path) -> AuditResult:
    """Audit the run directory ``run_dir``: its ``ledger.jsonl`` against the prompt stream
    replayed from its ``config.yaml``.

    Raises:
        AuditInputError: no such directory or no config.yaml; LedgerError: a missing or
        unreadable ledger (naming the file and line); ConfigError: an invalid config.yaml.
    """
    files = RunDir(run_dir)
    if not files.root.is_dir():
        raise AuditInputError(f"run directory {files.root} does not exist")
    if not files.config.is_file():
        raise AuditInputError(f"{files.config} does not exist: the replay needs the run's config")
    cfg = load_config(str(files.config))
    lines = read_ledger(files.ledger)
    steps = max((line.step for line in lines), default=0)
    task = build_task(cfg)
    stream = PromptStream(task.dataset(TRAIN_SPLIT), seed=cfg.seed)
    schedule = [[prompt for _, prompt in stream.take(cfg.grpo.prompts_per_step)] for _ in range(steps)]
    max_lag = cfg.rollout.max_staleness if cfg.rollout.mode == "async" else 0
    return audit_ledger(lines, schedule, task=task.name, split=TRAIN_SPLIT,
                        num_generations=cfg.grpo.num_generations, max_lag=max_lag)


def format_audit(result: AuditResult, run_dir: str | Path) -> str:
    """The audit as the command prints it: a line per kind with its count and first step."""
    span = f"steps 1-{result.steps}" if result.steps else "no step"
    lag = f"{result.max_lag} version{'s' if result.max_lag != 1 else ''}"
    out = [f"audit of {run_dir}: {span} committed, {result.scheduled} prompts scheduled, "
           f"{result.num_generations} completions each, weight lag allowed {lag}"]
    for kind in KINDS:
        first = result.first_step[kind]
        out.append(f"  {TITLES[kind]:<17}{result.counts[kind]:>6}"
                   + (f"   first at step {first}" if first is not None else ""))
    out.append("clean: every scheduled prompt trained exactly once, in order" if result.clean
               else "NOT clean: see the counts above (memrl audit's rules: docs/operations.md)")
    return "\n".join(out)


def main_audit(run_dir: str, as_json: bool = False) -> int:
    """``memrl audit``: print the audit; 0 when clean, 1 when any count is not 0."""
    result = audit_run(run_dir)
    print(json.dumps(result.to_dict(), indent=2) if as_json else format_audit(result, run_dir))
    return 0 if result.clean else 1
