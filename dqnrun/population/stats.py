"""Statistics across a setting's seeds, cheap enough to compute live: IQM and a percentile bootstrap CI.

The IQM is rliable's (``metrics.aggregate_iqm``: scipy's 25% trimmed mean, which drops ``int(n / 4)`` scores at
each end); the CI is a 95% percentile bootstrap over the runs, which for one task is what rliable's stratified
bootstrap is. Numpy only (rliable and scipy cost seconds to import; `dqnrun report` uses them on finished runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Interquartile mean: the mean of the scores left after dropping ``int(0.25 n)`` at each end."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if x.size == 0:
        raise ValueError("iqm of no values")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def bootstrap_ci(values: Sequence[float] | np.ndarray, reps: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the IQM over the runs: ``reps`` resamples (with replacement) of the n scores,
    from a generator seeded with ``seed`` (the interval of given scores is always the same)."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    samples = np.sort(x[rng.integers(0, x.size, (reps, x.size))], axis=1)
    cut = int(0.25 * x.size)
    stats = samples[:, cut:x.size - cut].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)
