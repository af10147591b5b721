"""Times one step's phases with the same blocks that attribute their failures.

Each phase of a step is a :func:`memrl.errors.phase` block (a timeout or a crash inside names
the phase, step and actor); :class:`StepClock` wraps those blocks and adds up how long each
one took under a metric key, so the step's ``time/*`` metrics come from the phases themselves
rather than from hand-placed ``perf_counter`` pairs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from memrl.errors import phase


class StepClock:
    """Durations of one step's phases, in seconds, keyed by metric name (``generate`` ...)."""

    def __init__(self, step: int, timeout_s: float):
        self.step, self.timeout_s = step, timeout_s
        self.durations: dict[str, float] = {}
        self._started = time.perf_counter()

    @contextmanager
    def phase(self, key: str, name: str, *, actor: str | None = None) -> Iterator[None]:
        """Run the block as phase ``name`` of this step (its own ``trainer.timeout_s`` limit
        and failure attribution) and add its duration to ``durations[key]``."""
        with self.timed(key), phase(name, step=self.step, actor=actor, timeout_s=self.timeout_s):
            yield

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the block's duration to ``durations[key]`` (for a block that attributes its
        failures itself, such as the scoring's retries)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.durations[key] = self.durations.get(key, 0.0) + time.perf_counter() - started

    def elapsed(self) -> float:
        """Seconds since the clock was made (the whole step, untimed gaps included)."""
        return time.perf_counter() - self._started
