"""Correlation of a time series: statistical inefficiency and uncorrelated subsamples (host, numpy).

The statistical inefficiency g = 1 + 2 sum_t (1 - t/N) C(t), with C the normalized
autocorrelation, summed from t = 1 until C first drops to zero or below (the estimator of
Chodera et al. 2007 and pymbar's ``timeseries.statistical_inefficiency``, with its rule of
summing at least up to t = 3); a series of N samples holds about N / g independent ones.

Reference:
    Chodera, Swope, Pitera, Seok, Dill, J. Chem. Theory Comput. 3, 26 (2007).
"""

from __future__ import annotations

import numpy as np


def statistical_inefficiency(series, min_lag: int = 3) -> float:
    """g >= 1 of a 1-D series (1.0 for a constant series or fewer than 2 samples)."""
    a = np.asarray(series, np.float64).reshape(-1)
    n = a.size
    if n < 2:
        return 1.0
    d = a - a.mean()
    var = float(np.dot(d, d)) / n
    if var <= 0.0:
        return 1.0
    g = 1.0
    for t in range(1, n - 1):
        c = float(np.dot(d[:n - t], d[t:])) / ((n - t) * var)
        if c <= 0.0 and t > min_lag:
            break
        g += 2.0 * c * (1.0 - t / n)
    return max(1.0, g)


def subsample_indices(n: int, g: float) -> np.ndarray:
    """Indices of about n / g roughly uncorrelated samples of n: round(i g) for i = 0, 1, ..."""
    g = max(1.0, float(g))
    idx = np.unique(np.round(np.arange(0.0, n, g)).astype(np.int64))
    return idx[idx < n]
