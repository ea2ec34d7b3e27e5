"""The statistics' shared vocabulary: significance levels, verdicts, intervals, and the
sample sizes a verdict of "no detectable difference" waits for (pure, no I/O).

The tests themselves work on aggregates in :mod:`serve_app.stats`. The sample
size is the one at which the always-valid test (the mixture SPRT of Johari et al. 2017 on
the normal approximation of the difference) has 80% power for the minimum detectable
effect, so "no detectable difference" is only said once it means something.
"""

from __future__ import annotations

import math
from enum import StrEnum

from pydantic import BaseModel
from scipy import stats
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
)

from serve_app.stats.settings import (
    ALPHA,
    POWER,
)


class Verdict(StrEnum):
    NOT_ENOUGH_DATA = "not enough data"
    NO_DIFFERENCE = "no detectable difference"
    BETTER = "challenger better"
    WORSE = "challenger worse"
    SRM = "SRM: do not trust"


class Interval(BaseModel):
    estimate: float
    low: float
    high: float


class SampleSize(BaseModel):
    """Scored samples per arm needed to detect ``min_detectable_effect`` with 80% power."""

    min_detectable_effect: float
    fixed_horizon: int
    sequential: int
    collected: int


def accuracy_interval(correct: int, total: int) -> Interval | None:
    """Online accuracy with a Wilson 95% interval."""
    if total == 0:
        return None
    low, high = proportion_confint(correct, total, alpha=ALPHA, method="wilson")
    return Interval(estimate=correct / total, low=float(low), high=float(high))


def fixed_horizon_n(size: float) -> int:
    """Per-arm n for a two-sided test at ALPHA with POWER and a standardised effect
    ``size``, in closed form (statsmodels' ``NormalIndPower`` root finder gives the same n
    in the tests, at milliseconds per call, which the report makes per comparison)."""
    z = stats.norm.isf(ALPHA / 2) + stats.norm.ppf(POWER)
    return math.ceil(2 * (z / size) ** 2) if size > 0 else 0


def fixed_horizon_sample_size(
    sd_control: float, sd_challenger: float, effect: float, binary_rates: tuple | None = None
) -> int:
    """Per-arm n for a two-sided test at ALPHA with POWER; ``binary_rates`` (the two
    proportions) use Cohen's h as the standardised effect."""
    if binary_rates is not None:
        size = abs(proportion_effectsize(*binary_rates))
    else:
        size = abs(effect) / math.sqrt((sd_control**2 + sd_challenger**2) / 2)
    return fixed_horizon_n(size)


def _norm_sf(x: float) -> float:
    """The normal tail from ``math.erfc``: scipy's costs microseconds a call, and the
    bisection below calls it dozens of times per comparison."""
    return 0.5 * math.erfc(x / math.sqrt(2))


def sequential_power(n: int, variance: float, effect: float, tau2: float) -> float:
    """Power of one look of the mSPRT at n per arm (per-observation ``variance`` summed
    over both arms). Looks before n only add power, so this is a lower bound."""
    v = variance / n
    threshold = math.sqrt(
        2 * v * (v + tau2) / tau2 * (math.log(1 / ALPHA) + 0.5 * math.log((v + tau2) / v))
    )
    sd = math.sqrt(v)
    return _norm_sf((threshold - effect) / sd) + _norm_sf((threshold + effect) / sd)


def sequential_sample_size(variance: float, effect: float, tau2: float) -> int:
    """Smallest per-arm n at which :func:`sequential_power` reaches POWER (bisection)."""
    if variance <= 0 or effect == 0:
        return 0
    low, high = 2, 4
    while sequential_power(high, variance, effect, tau2) < POWER:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (
            (low, middle)
            if sequential_power(middle, variance, effect, tau2) >= POWER
            else (middle, high)
        )
    return high
