"""Turns raw memory rewards into the normalised exploit/explore rewards, in batch order.

State (snapshotted): one sliding window per memory, the reference-mode annealing factor and
the step at which the explore reward started (paper-mode annealing counts steps from there).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from memrl.memory.rewards import (
    exploit_reference,
    explore_active,
    explore_reference,
    minmax_paper,
)
from memrl.memory.settings import MemorySettings


class RewardNormaliser:
    """Sliding-window min-max normalisation, warm-up and annealing for both modes.

    Empty retrieval (NaN raw value): exploit 0; explore 0 (paper) or 1.0 (reference). Neither
    enters a window. During warm-up the explore reward is 0 and nothing enters its window.
    """

    def __init__(self, settings: MemorySettings):
        self.settings = settings
        # float (paper) or np.float32 (reference) raw values, newest last
        self.exploit_window: deque = deque(maxlen=settings.window)
        self.explore_window: deque = deque(maxlen=settings.window)
        self.anneal_factor = 1.0
        self.explore_start_step: int | None = None

    def apply(
        self, distance: np.ndarray, novelty: np.ndarray, failure_keys: np.ndarray, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised rewards for one step's responses, in order.

        Args:
            distance: [n] exploit distance ‖φ(a) − c‖, NaN where the success retrieval is empty.
            novelty: [n] explore novelty 1 − max cos, NaN where the failure retrieval is empty.
            failure_keys: [n] failure-memory keys counted for warm-up when each was scored.
            step: 0-based training step of this batch.
        Returns:
            exploit [n], explore [n] float32.
        """
        n = len(distance)
        exploit = np.zeros(n, dtype=np.float32)
        explore = np.zeros(n, dtype=np.float32)
        reference = self.settings.mode == "reference"
        distance = np.asarray(distance, dtype=np.float32)
        novelty = np.asarray(novelty, dtype=np.float32)
        for i in range(n):
            if not math.isnan(distance[i]):
                exploit[i] = self._exploit(distance[i], reference)
            if self.settings.use_explore and explore_active(step, int(failure_keys[i]), self.settings):
                explore[i] = self._explore(novelty[i], step, reference)
        return exploit, explore

    def _exploit(self, distance: np.float32, reference: bool) -> float:
        if reference:  # float32 window and arithmetic, as the official code
            self.exploit_window.append(distance)
            return exploit_reference(distance, self.exploit_window)
        self.exploit_window.append(-float(distance))
        return minmax_paper(-float(distance), self.exploit_window, self.settings.eps)

    def _explore(self, novelty: np.float32, step: int, reference: bool) -> float:
        if reference:
            if math.isnan(novelty):
                return 1.0
            self.explore_window.append(novelty)
            scaled = explore_reference(novelty, self.explore_window)
            if scaled is None:
                return 0.0
            value = float(self.anneal_factor * scaled)
            self.anneal_factor *= self.settings.anneal_rate
            return value
        if self.explore_start_step is None:
            self.explore_start_step = step
        if math.isnan(novelty):
            return 0.0
        self.explore_window.append(float(novelty))
        factor = self.settings.anneal_rate ** max(0, step - self.explore_start_step)
        return factor * minmax_paper(float(novelty), self.explore_window, self.settings.eps)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (floats, float32 included, round-trip exactly through JSON)."""
        return {
            "exploit_window": [float(x) for x in self.exploit_window],
            "explore_window": [float(x) for x in self.explore_window],
            "anneal_factor": self.anneal_factor,
            "explore_start_step": self.explore_start_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            # reference mode computes in float32 like the official code; paper mode in float64
            cast = np.float32 if self.settings.mode == "reference" else float
            exploit_window = [cast(x) for x in state["exploit_window"]]
            explore_window = [cast(x) for x in state["explore_window"]]
            anneal_factor = float(state["anneal_factor"])
            start = state["explore_start_step"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad normaliser state: {exc!r}") from exc
        self.exploit_window = deque(exploit_window, maxlen=self.settings.window)
        self.explore_window = deque(explore_window, maxlen=self.settings.window)
        self.anneal_factor = anneal_factor
        self.explore_start_step = None if start is None else int(start)
