"""The prompt ledger: what the learners trained on, one JSON line per committed optimizer step.

``RUN_DIR/ledger.jsonl``, one line per step, written with the step's metrics line (before it)
and cut back to the checkpoint on resume exactly as ``metrics.jsonl`` is, so a step redone after
a resume replaces the interrupted run's record instead of adding a second one::

    {"step": 3, "task": "arith", "split": "train", "prompts": [
      {"id": "17", "epoch": 0, "index": 17, "received": 4, "trained": 4, "filtered": false,
       "versions": [2, 2, 2, 2]}, ...]}

Per prompt, in the step's order:

- ``id``, ``epoch``, ``index``: its dataset id: the record's id, the prompt stream's epoch and
  the record's index in the split (``epoch``/``index`` null: the learners trained on a record
  the step did not schedule at that place);
- ``received``: its completions that reached the learners; ``trained``: those that entered the
  loss (after ``grpo.filter_zero_variance``'s keep mask);
- ``filtered``: the driver dropped the group because its rewards were all equal — trained on
  by design with 0 completions in the loss, not lost;
- ``versions``: the weight version that generated each trained completion (the oldest version
  among its tokens).

The counts and versions are the learners' own (:class:`TrainedGroup`, one per rank, merged),
not what the driver meant to send. ``memrl audit`` (:mod:`memrl.audit`) checks the ledger
against a replay of the prompt stream. Ids only, no text: a step of 64 prompts is a few KB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memrl.errors import InputError
from memrl.step_log import truncate_after


class LedgerError(InputError):
    """A ledger that cannot be read; the message names the file and line."""

    label = "unreadable ledger"
    hint = ("ledger.jsonl is written by memrl train, a line per step; restore it from a copy, or "
            "audit a run directory that memrl wrote whole")


@dataclass(frozen=True)
class PromptId:
    """A prompt's dataset id within a task's split: its record's ``id``, the stream's ``epoch``
    (0 first) and the record's ``index`` in the split."""

    id: str
    epoch: int
    index: int


@dataclass
class TrainedGroup:
    """What the learners did with one prompt group of a step (one rank's share, or all ranks
    merged): the group's record id, completions ``received`` and ``trained`` (in the loss), the
    weight version of each trained one, and Σ |learner − sampler| log-prob over the trained
    completions' ``tokens`` real tokens (the drift alarm's per-worker share)."""

    record_id: str
    received: int = 0
    trained: int = 0
    versions: list[int] = field(default_factory=list)
    gap_sum: float = 0.0
    tokens: int = 0


def merge_trained(per_rank: Sequence[Mapping[int, TrainedGroup]]) -> dict[int, TrainedGroup]:
    """One :class:`TrainedGroup` per group position of the step from every rank's (ranks hold
    whole groups, so a position normally comes from one rank; counts add up otherwise)."""
    merged: dict[int, TrainedGroup] = {}
    for groups in per_rank:
        for position, group in groups.items():
            into = merged.setdefault(position, TrainedGroup(group.record_id))
            into.received += group.received
            into.trained += group.trained
            into.versions += group.versions
            into.gap_sum += group.gap_sum
            into.tokens += group.tokens
    return dict(sorted(merged.items()))


def ledger_line(step: int, task: str, split: str, scheduled: Sequence[PromptId],
                trained: Mapping[int, TrainedGroup], filtered: Sequence[bool]) -> dict[str, Any]:
    """The ledger line of ``step``: ``scheduled[g]`` is the prompt the driver put at group
    position ``g``, ``trained`` what the learners reported per position, ``filtered[g]`` whether
    the driver's keep mask dropped that group. A scheduled prompt the learners never reported
    gets ``received`` 0; a record they trained at a position where another was scheduled gets
    an entry of its own without ``epoch``/``index``."""
    prompts: list[dict[str, Any]] = []
    for position, prompt in enumerate(scheduled):
        group = trained.get(position)
        dropped = bool(filtered[position]) if position < len(filtered) else False
        if group is not None and group.record_id == prompt.id:
            prompts.append(_entry(prompt.id, prompt.epoch, prompt.index, group, dropped))
            continue
        prompts.append(_entry(prompt.id, prompt.epoch, prompt.index, None, dropped))
        if group is not None:  # another record's completions stood in this place
            prompts.append(_entry(group.record_id, None, None, group, dropped))
    for position in sorted(p for p in trained if not 0 <= p < len(scheduled)):
        prompts.append(_entry(trained[position].record_id, None, None, trained[position], False))
    return {"step": step, "task": task, "split": split, "prompts": prompts}


def _entry(record_id: str, epoch: int | None, index: int | None, group: TrainedGroup | None,
           filtered: bool) -> dict[str, Any]:
    return {"id": record_id, "epoch": epoch, "index": index,
            "received": group.received if group else 0, "trained": group.trained if group else 0,
            "filtered": filtered, "versions": list(group.versions) if group else []}


class LedgerWriter:
    """Appends each committed step's line to ``ledger.jsonl``, flushed at once.

    ``resume_step``: the run resumes a checkpoint of that step, taken when the file had
    ``keep_lines`` lines (-1: unknown, an older checkpoint: the lines of steps up to it are
    kept); what the interrupted run wrote after it is dropped. None: a fresh run, which starts
    the file empty (a previous run's record in the same directory would read as duplicates).
    """

    def __init__(self, path: Path, *, keep_lines: int = 0, resume_step: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if resume_step is None:
            path.write_bytes(b"")
            self.lines = 0
        else:
            self.lines = truncate_after(path, keep_lines, resume_step)
        self._file = path.open("a", encoding="utf-8")

    def append(self, line: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.flush()
        self.lines += 1

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class LedgerEntry:
    """One prompt of a ledger line (the fields of the module docstring)."""

    id: str
    epoch: int | None
    index: int | None
    received: int
    trained: int
    filtered: bool
    versions: tuple[int, ...]


@dataclass(frozen=True)
class LedgerLine:
    """One committed step of the ledger."""

    step: int
    task: str
    split: str
    prompts: tuple[LedgerEntry, ...]


def read_ledger(path: Path) -> list[LedgerLine]:
    """Every line of the ledger at ``path``, in file order.

    Raises:
        LedgerError: the file is missing, or a line is not JSON or lacks a field (naming the
            file and line).
    """
    if not path.is_file():
        raise LedgerError(f"{path} does not exist", hint="the run directory has no prompt ledger: "
                          "a run of an older memrl, or not a run directory (memrl train writes "
                          "ledger.jsonl from its first step)")
    lines: list[LedgerLine] = []
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if text.strip():
                lines.append(_parse_line(text, f"{path}:{number}"))
    return lines


def _parse_line(text: str, where: str) -> LedgerLine:
    try:
        data = json.loads(text)
        prompts = tuple(
            LedgerEntry(id=str(p["id"]), epoch=_optional_int(p["epoch"]), index=_optional_int(p["index"]),
                        received=int(p["received"]), trained=int(p["trained"]),
                        filtered=bool(p["filtered"]), versions=tuple(int(v) for v in p["versions"]))
            for p in data["prompts"])
        return LedgerLine(step=int(data["step"]), task=str(data["task"]), split=str(data["split"]),
                          prompts=prompts)
    except json.JSONDecodeError as exc:
        raise LedgerError(f"{where}: not a JSON line ({exc.msg})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"{where}: not a ledger line ({type(exc).__name__}: {exc})") from exc


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
