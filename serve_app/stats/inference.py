"""Normal-approximation inference shared by the comparisons: the 95% interval, the two-sided
z p-value and the always-valid mSPRT p-value.

* **Always-valid p-values at bucket boundaries.** The mSPRT of :mod:`serve_app.stats.common`
  is valid however often one looks; evaluating it only at bucket boundaries, on cumulative
  per-bucket aggregates, is a subset of those looks, so validity holds. Looks start once
  both arms have ``min_samples`` observations.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from serve_app.stats.common import Interval
from serve_app.stats.settings import Z


def msprt_p_value(estimate: np.ndarray, variance: np.ndarray, tau2: float) -> float | None:
    """Always-valid p-value of a normal estimate watched at several looks: the minimum over
    looks of the inverse mixture likelihood ratio (normal mixing distribution, variance
    ``tau2``) of Johari et al. (2017). Looks without a positive variance carry no evidence.
    None when there is no look at all."""
    estimate, variance = np.asarray(estimate, float), np.asarray(variance, float)
    if estimate.size == 0 or tau2 <= 0:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(variance / (variance + tau2)) + (
            tau2 * estimate**2 / (2 * variance * (variance + tau2))
        )
    log_lr = np.where(np.isfinite(log_lr) & (variance > 0), log_lr, 0.0)
    return float(min(1.0, math.exp(-max(float(log_lr.max()), 0.0))))


def _z_p_value(estimate: float, variance: float) -> float | None:
    if not math.isfinite(estimate) or not math.isfinite(variance):
        return None
    if variance <= 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.norm.sf(abs(estimate) / math.sqrt(variance)))


def _interval(estimate: float, variance: float) -> Interval | None:
    if not (math.isfinite(estimate) and math.isfinite(variance)):
        return None
    half = Z * math.sqrt(max(variance, 0.0))
    return Interval(estimate=estimate, low=estimate - half, high=estimate + half)
