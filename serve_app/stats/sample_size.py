"""Sample sizes: the default minimum detectable effect per metric and the per-arm sizes
(fixed-horizon and sequential) to detect it, against the effective size collected."""

from __future__ import annotations

import math

from serve_app.stats.common import SampleSize, fixed_horizon_n, sequential_sample_size
from serve_app.stats.models import BINARY, Metric
from serve_app.stats.settings import (
    DEFAULT_ACCURACY_EFFECT,
    DEFAULT_ERROR_RATE_EFFECT,
    DEFAULT_LOG_LATENCY_EFFECT,
    DEFAULT_RELATIVE_ERROR_EFFECT,
)


def _default_effect(metric: Metric, control_mean: float | None) -> float:
    if metric is Metric.ACCURACY:
        return DEFAULT_ACCURACY_EFFECT
    if metric is Metric.MAE:
        return DEFAULT_RELATIVE_ERROR_EFFECT * (control_mean or 0.0) or 1.0
    if metric is Metric.ERROR_RATE:
        return DEFAULT_ERROR_RATE_EFFECT
    return DEFAULT_LOG_LATENCY_EFFECT


def _sample_size(
    metric: Metric, effect: float, control_mean: float | None, unit_variance: float, info: float
) -> SampleSize | None:
    """Per-arm sizes for ``effect`` (:mod:`serve_app.stats.common`) and the *effective* per-arm
    size collected: the per-arm n of a balanced single-stratum experiment with the same
    variance of the estimate. It accounts for unequal shares and for stratification."""
    if effect <= 0 or unit_variance <= 0 or not math.isfinite(unit_variance):
        return None
    if metric in BINARY and control_mean is not None:
        p1 = control_mean
        p2 = p1 + effect if p1 + effect < 1 else p1 - effect
        sd1, sd2 = math.sqrt(p1 * (1 - p1)), math.sqrt(max(p2 * (1 - p2), 0.0))
        size = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))  # Cohen's h
    else:
        sd1 = sd2 = math.sqrt(unit_variance / 2)
        size = effect / math.sqrt((sd1**2 + sd2**2) / 2) if sd1 + sd2 > 0 else 0.0
    if sd1 + sd2 == 0:
        return None
    return SampleSize(
        min_detectable_effect=effect,
        fixed_horizon=fixed_horizon_n(size),
        sequential=sequential_sample_size(sd1**2 + sd2**2, effect, effect**2),
        collected=int(unit_variance / info) if info > 0 else 0,
    )
