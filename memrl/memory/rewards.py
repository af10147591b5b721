"""The Memory-R / Memory-R+ reward math as pure functions (checkable against the spec).

Raw quantities, for a response embedding φ(a) (unit length):
- exploit distance ``n = ‖φ(a) − c‖₂`` with ``c`` the mean of the union of the values of the
  K nearest success keys; the paper's raw exploit reward is ``−n``;
- explore novelty ``m = 1 − max_b cos(φ(a), b)`` over the union of the values of the K nearest
  failure keys; this is the paper's raw explore reward.

Normalisation keeps a window of the last ``w`` raw values per memory. ``paper`` mode:
``(R − min)/(max − min + ε)``. ``reference`` mode reproduces the official code: no ε, and a
flat window (``max == min``) returns ``1 − n`` for exploit and ``0`` for explore; its
``reference_*`` functions repeat the official float32 operations exactly, because with
insert-before-score a wrong answer meets itself (novelty ≈ 0 up to rounding) and those rounding
residues decide whether the window is flat.

These are the unweighted R̂_exploit and R̂_explore; λ_s and λ_e weigh them in the total reward,
:func:`memrl.rewards.total.total_reward`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from memrl.memory.settings import MemorySettings


def centroid_distance(responses: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """``‖a_i − c_i‖₂`` per row. responses, centroids: [n, dim] float32 → [n] float32."""
    return np.linalg.norm(responses - centroids, axis=1).astype(np.float32)


def max_cosine(responses: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Highest cosine similarity of each response to any of ``values``.

    responses: [m, dim]; values: [v, dim] with v ≥ 1 → [m] float32. Divides by the norms as
    cosine is defined (embeddings are unit length, so this only removes rounding drift).
    """
    dots = responses @ values.T
    norms = np.linalg.norm(values, axis=1)[None, :] * np.linalg.norm(responses, axis=1)[:, None]
    return (dots / norms).max(axis=1).astype(np.float32)


def minmax_paper(value: float, window: Iterable[float], eps: float) -> float:
    """``(value − min)/(max − min + eps)`` over ``window`` (which already holds ``value``)."""
    low, high = min(window), max(window)
    return float((value - low) / (high - low + eps))


def reference_distance(response: np.ndarray, values: np.ndarray) -> np.float32:
    """Official exploit distance ``‖a − mean(values)‖`` with the same NumPy float32 operations
    (so equal inputs give bit-equal outputs). response: [dim]; values: [v, dim]."""
    centroid = np.mean(values, axis=0)
    return np.float32(np.linalg.norm(response - centroid))


def reference_novelty(response: np.ndarray, values: np.ndarray) -> np.float32:
    """Official explore novelty, bit for bit. response: [dim]; values: [v, dim].

    The official code divides the [v, 1] dot products by a [v] vector of norms, which NumPy
    broadcasts to a [v, v] matrix ``dot_i / (‖b_j‖·‖a‖)`` before taking the max. Division is
    monotone, so that max is ``dot_i / min_j`` for non-negative dots and ``dot_i / max_j`` for
    negative ones; computed that way without building the matrix. The difference from a plain
    cosine is rounding-sized, but it decides whether the official min-max window is flat when
    a wrong answer is compared with itself (novelty ≈ 0 ± 1e-7), so it is reproduced.
    """
    value = response.reshape(1, -1)
    dots = np.dot(values, value.T)[:, 0]
    denominators = np.linalg.norm(values, axis=1) * np.linalg.norm(value)
    candidates = np.where(dots >= 0, dots / denominators.min(), dots / denominators.max())
    return np.float32(1 - np.max(candidates))


def exploit_reference(distance: np.float32, window: Iterable[np.float32]) -> float:
    """Official exploit reward from a distance already appended to ``window`` (float32
    arithmetic, no epsilon): ``1 − n̂``, or ``1 − n`` when the window is flat."""
    low, high = min(window), max(window)
    if high == low:
        return float(1 - distance)
    return float(1 - (distance - low) / (high - low))


def explore_reference(novelty: np.float32, window: Iterable[np.float32]) -> np.float32 | None:
    """Official normalised explore novelty (float32, before annealing) from a value already
    appended to ``window``; ``None`` when the window is flat (the official code then returns 0
    and does not anneal)."""
    low, high = min(window), max(window)
    if high == low:
        return None
    return (novelty - low) / (high - low)


def explore_active(step: int, failure_keys: int, settings: MemorySettings) -> bool:
    """Whether warm-up is over: ``step`` (0-based training step) or ``failure_keys`` (distinct
    questions in the failure memory) has reached ``settings.warmup``."""
    counter = step if settings.warmup_unit == "steps" else failure_keys
    return counter >= settings.warmup

