"""pass@k: the unbiased estimator of Chen et al. (2021)."""

from __future__ import annotations

import math

PASS_AT_K_ESTIMATOR = (
    "unbiased estimator 1 - C(n-c, k)/C(n, k) (Chen et al. 2021) with n = k samples per "
    "problem: 1 if any sample is correct"
)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate (Chen et al. 2021) from ``n`` samples of which ``c`` are
    correct: ``1 - C(n - c, k) / C(n, k)``, the chance that ``k`` of the ``n`` samples drawn
    without replacement include a correct one. Needs ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
