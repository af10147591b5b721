"""Merging the learner's per-step statistics across micro-batches and data-parallel ranks.

Each rank reports, for one ``optimizer_step``, a flat ``dict[str, float]``. Keys fall in four kinds:

- summed: ``loss`` (the rank's share of the global loss; shares add up to it), ``tokens``,
  ``sequence_tokens``, ``sequences``;
- shared: identical on every rank after the optimiser step (``grad_norm``, ``lr``, ``step``);
- slowest: durations (``*_s``), where the step waits for the slowest rank;
- every other key is a mean over real completion tokens and is averaged weighted by ``tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SUMMED = frozenset({"loss", "tokens", "sequence_tokens", "sequences"})
SHARED = frozenset({"grad_norm", "lr", "step"})


def token_weighted_mean(
    values: Sequence[Mapping[str, float]], weights: Sequence[float], key: str
) -> float:
    """``Σ w_i · v_i[key] / Σ w_i`` over the entries that have ``key`` (0.0 when none weigh)."""
    pairs = [(w, v[key]) for v, w in zip(values, weights) if key in v]
    total = sum(w for w, _ in pairs)
    if total <= 0:
        return 0.0
    return sum(w * x for w, x in pairs) / total


def merge_rank_stats(per_rank: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """One statistics dict for the whole step from every rank's ``optimizer_step`` result.

    Raises ``ValueError`` when ``per_rank`` is empty or a rank lacks ``tokens``.
    """
    if not per_rank:
        raise ValueError("merge_rank_stats got no rank statistics")
    for rank, stats in enumerate(per_rank):
        if "tokens" not in stats:
            raise ValueError(f"statistics of rank {rank} lack 'tokens': {sorted(stats)}")
    weights = [float(stats["tokens"]) for stats in per_rank]
    keys = sorted({key for stats in per_rank for key in stats})
    merged: dict[str, float] = {}
    for key in keys:
        present = [stats[key] for stats in per_rank if key in stats]
        if key in SUMMED:
            merged[key] = float(sum(present))
        elif key in SHARED:
            merged[key] = float(present[0])
        elif key.endswith("_s"):
            merged[key] = float(max(present))
        else:
            merged[key] = token_weighted_mean(per_rank, weights, key)
    return merged
