"""Start-up of a run's actors: all of them start at once, each phase (the memory service, the
learners, the rollout workers) is waited for and reported by name, and start-up never waits
silently: it says what each actor not ready yet is doing, or that it waits for a place.

An actor says what it is doing while it starts (:func:`announce`: loading or downloading a
model, starting an engine) in the GCS's key-value store, under its job's id, so the driver reads
it from any node (:func:`announced`); an actor that said nothing yet has no place in the cluster
or no process yet. Pure formatting lives in :mod:`memrl.cluster.placement`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ray
from ray.experimental import internal_kv

from memrl.cluster.placement import Demand, waiting_report
from memrl.errors import PhaseTimeout
from memrl.terminal import terminal

log = logging.getLogger(__name__)

NAMESPACE = "memrl-startup"
POLL_S = 0.25  # readiness checks are non-blocking ray.wait calls


@dataclass(frozen=True)
class Stage:
    """What an actor said it is doing, and since when (seconds since the epoch)."""

    what: str
    since: float


def _key_prefix() -> str:
    return f"{ray.get_runtime_context().get_job_id()}/"


def announce(actor: str, stage: str) -> None:
    """Say that ``actor`` (its start-up name: ``learner rank 0``, ``rollout-1``, ``memory shard
    0``) is now doing ``stage``; best effort, never raises."""
    try:
        value = json.dumps({"what": stage, "since": time.time()}).encode()
        internal_kv._internal_kv_put(f"{_key_prefix()}{actor}".encode(), value, overwrite=True,
                                     namespace=NAMESPACE)
    except Exception:  # noqa: BLE001 - an announcement must never stop an actor's start
        log.debug("start-up announcement of %s skipped", actor, exc_info=True)


def announced() -> dict[str, Stage]:
    """This job's actors' latest announcements, by actor name."""
    prefix = _key_prefix()
    stages = {}
    for key in internal_kv._internal_kv_list(prefix, namespace=NAMESPACE):
        value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
        if value:
            data = json.loads(value)
            stages[key.decode()[len(prefix):]] = Stage(data["what"], float(data["since"]))
    return stages


def forget_announcements() -> None:
    """Remove this job's announcements (start-up is over)."""
    internal_kv._internal_kv_del(_key_prefix().encode(), del_by_prefix=True, namespace=NAMESPACE)


@dataclass
class StartupPhase:
    """One phase of start-up. ``ready()`` must not block: True once every actor of the phase
    answers; it raises when the phase failed. ``waiting()`` lists the actors not ready yet;
    ``detail()`` is said beside the phase once it is ready (e.g. the engine the workers run)."""

    name: str
    ready: Callable[[], bool]
    waiting: Callable[[], Sequence[Demand]]
    detail: Callable[[], str] = str


MAX_REPORT_EVERY_S = 60.0


def wait_for_phases(phases: Sequence[StartupPhase], *, timeout_s: float, every_s: float = 10.0,
                    say: Callable[[str], None] = terminal.say) -> None:
    """Wait until every phase is ready; say each one's readiness as it comes, and what the others
    wait for after ``every_s`` seconds, then at doubling intervals up to a minute (a slow start on
    a busy machine stays a few lines). Past ``timeout_s`` raise
    :class:`~memrl.errors.PhaseTimeout` naming the actors not ready and what they were doing."""
    started = time.monotonic()
    left = list(phases)
    next_report = started + every_s
    try:
        while left:
            for phase in list(left):
                if phase.ready():
                    left.remove(phase)
                    detail = phase.detail()
                    say(f"memrl: {phase.name} ready after {time.monotonic() - started:.0f} s"
                        f"{f' ({detail})' if detail else ''}")
            now = time.monotonic()
            if left and (now >= next_report or now - started > timeout_s):
                line = _report(left, now - started)
                if now - started > timeout_s:
                    raise PhaseTimeout(
                        f"timed out after {timeout_s:g} s waiting for start-up of "
                        f"{', '.join(p.name for p in left)}",
                        where=line.removeprefix("memrl: "),
                        hint="an actor with no place waits for the cluster (add nodes or ask for "
                             "less); one that is slow to start needs a larger trainer.timeout_s; its "
                             "log is in OUTPUT_DIR/logs/")
                say(line)
                next_report = now + every_s
                every_s = min(2 * every_s, MAX_REPORT_EVERY_S)
            if left:
                time.sleep(POLL_S)
    finally:
        try:
            forget_announcements()
        except Exception:  # noqa: BLE001 - start-up's result stands without the cleanup
            log.debug("start-up announcements not removed", exc_info=True)


def _report(left: Sequence[StartupPhase], elapsed_s: float) -> str:
    try:
        stages = {actor: (s.what, time.time() - s.since) for actor, s in announced().items()}
        free = ray.available_resources()
    except Exception:  # noqa: BLE001 - reporting must never break start-up
        log.debug("start-up report without stages", exc_info=True)
        stages, free = {}, {}
    waiting = [d for phase in left for d in phase.waiting()]
    return waiting_report("start-up of " + ", ".join(p.name for p in left), elapsed_s, waiting,
                          free, stages)
