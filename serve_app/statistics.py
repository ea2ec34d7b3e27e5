"""A/B statistics for one challenger against the control: pure functions, no I/O.

Fixed-horizon tests come from statsmodels and scipy. The always-valid p-value is the
mixture sequential probability ratio test (mSPRT, Johari et al. 2017) on the normal
approximation of the difference, evaluated after every observation in arrival order and
minimised, so it stays valid however often someone looks at a live experiment. The verdict
rests on it; the sample size it reports is the one at which that test has 80% power for the
minimum detectable effect, so "no detectable difference" is only said once it means something.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from pydantic import BaseModel
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

ALPHA = 0.05
POWER = 0.8
SRM_ALPHA = 0.001
MIN_SEQUENTIAL_SAMPLES = 100  # per arm before the sequential test looks (normal approximation)
DEFAULT_ACCURACY_EFFECT = 0.05  # five accuracy points
DEFAULT_RELATIVE_ERROR_EFFECT = 0.10  # a tenth of the control's mean absolute error


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


class Comparison(BaseModel):
    challenger: str
    control: str
    metric: str
    difference: Interval | None
    p_value: float | None
    always_valid_p_value: float | None
    sample_size: SampleSize | None = None
    verdict: Verdict


def accuracy_interval(correct: int, total: int) -> Interval | None:
    """Online accuracy with a Wilson 95% interval."""
    if total == 0:
        return None
    low, high = proportion_confint(correct, total, alpha=ALPHA, method="wilson")
    return Interval(estimate=correct / total, low=float(low), high=float(high))


def mean_interval(values: Sequence[float]) -> Interval | None:
    """A mean (e.g. absolute error) with a t-based 95% interval."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    half = stats.t.ppf(1 - ALPHA / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data))
    mean = float(data.mean())
    return Interval(estimate=mean, low=mean - half, high=mean + half)


def sample_ratio_p_value(assigned: dict[str, int], shares: dict[str, float]) -> float | None:
    """Chi-square of observed assignments against configured shares (variants with weight)."""
    names = [n for n, share in shares.items() if share > 0]
    total = sum(assigned.get(n, 0) for n in names)
    if len(names) < 2 or total == 0:
        return None
    observed = [assigned.get(n, 0) for n in names]
    expected = [shares[n] / sum(shares[m] for m in names) * total for n in names]
    return float(stats.chisquare(observed, expected).pvalue)


def always_valid_p_value(
    control: Sequence[float],
    challenger: Sequence[float],
    tau2: float,
    min_samples: int = MIN_SEQUENTIAL_SAMPLES,
    binary: bool | None = None,
) -> float | None:
    """Minimum mSPRT p-value over every prefix of both arms in arrival order.

    Prefixes advance both arms in proportion, one look per observation of the shorter
    arm: the same p-value anyone watching the experiment continuously would have seen.
    For 0/1 outcomes the variance is the pooled proportion's, as in the z-test: each arm's
    own estimate is zero while it is perfect so far, and a small perfect arm against a big
    one then looked significant (37% false positives in A/A runs at 97% accuracy, 90/10).
    ``binary`` defaults to "every value is 0 or 1".
    """
    a, b = np.asarray(control, float), np.asarray(challenger, float)
    looks = min(len(a), len(b))
    if looks < 2:
        return None
    k = np.arange(1, looks + 1)
    na = np.ceil(k * len(a) / looks).astype(int)
    nb = np.ceil(k * len(b) / looks).astype(int)
    keep = (na >= max(2, min_samples)) & (nb >= max(2, min_samples))
    if not keep.any():
        return None
    na, nb = na[keep], nb[keep]
    mean_a, var_a = _prefix_moments(a, na)
    mean_b, var_b = _prefix_moments(b, nb)
    if binary is None:
        binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    if binary:
        pooled = (mean_a * na + mean_b * nb) / (na + nb)
        variance = pooled * (1 - pooled) * (1 / na + 1 / nb)
    else:
        variance = var_a / na + var_b / nb
    difference = mean_b - mean_a
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(variance / (variance + tau2)) + (
            tau2 * difference**2 / (2 * variance * (variance + tau2))
        )
    log_lr = np.where(variance > 0, log_lr, 0.0)
    return float(min(1.0, math.exp(-log_lr.max())))


def _prefix_moments(x: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance of ``x[:n]`` for each n, from running sums."""
    total, squares = np.cumsum(x)[n - 1], np.cumsum(x * x)[n - 1]
    mean = total / n
    return mean, np.maximum(squares - n * mean**2, 0.0) / (n - 1)


def fixed_horizon_sample_size(
    sd_control: float, sd_challenger: float, effect: float, binary_rates: tuple | None = None
) -> int:
    """Per-arm n for a two-sided test at ALPHA with POWER (statsmodels' normal power)."""
    if binary_rates is not None:
        size = abs(proportion_effectsize(*binary_rates))
    else:
        size = abs(effect) / math.sqrt((sd_control**2 + sd_challenger**2) / 2)
    if size == 0:
        return 0
    return math.ceil(NormalIndPower().solve_power(size, alpha=ALPHA, power=POWER, ratio=1.0))


def sequential_power(n: int, variance: float, effect: float, tau2: float) -> float:
    """Power of one look of the mSPRT at n per arm (per-observation ``variance`` summed
    over both arms). Looks before n only add power, so this is a lower bound."""
    v = variance / n
    threshold = math.sqrt(
        2 * v * (v + tau2) / tau2 * (math.log(1 / ALPHA) + 0.5 * math.log((v + tau2) / v))
    )
    sd = math.sqrt(v)
    return float(
        stats.norm.sf((threshold - effect) / sd) + stats.norm.cdf((-threshold - effect) / sd)
    )


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


def sample_size(
    control: np.ndarray, binary: bool, effect: float | None, collected: int
) -> tuple[SampleSize | None, float | None]:
    """The planning figures and the mixing variance (tau^2 = effect^2) they assume."""
    if len(control) < 2:
        return None, None
    if binary:
        effect = effect or DEFAULT_ACCURACY_EFFECT
        p1 = float(control.mean())
        p2 = p1 + effect if p1 + effect < 1 else p1 - effect
        sd1, sd2 = math.sqrt(p1 * (1 - p1)), math.sqrt(max(p2 * (1 - p2), 0.0))
        rates = (p2, p1)
    else:
        effect = effect or DEFAULT_RELATIVE_ERROR_EFFECT * float(control.mean())
        sd1 = sd2 = float(control.std(ddof=1))
        rates = None
    if effect <= 0 or sd1 + sd2 == 0:
        return None, None
    tau2 = effect**2
    return SampleSize(
        min_detectable_effect=effect,
        fixed_horizon=fixed_horizon_sample_size(sd1, sd2, effect, rates),
        sequential=sequential_sample_size(sd1**2 + sd2**2, effect, tau2),
        collected=collected,
    ), tau2


def compare(
    control_name: str,
    challenger_name: str,
    control: Sequence[float],
    challenger: Sequence[float],
    metric: str,
    higher_is_better: bool,
    srm_p_value: float | None,
    min_samples: int = 100,
    min_detectable_effect: float | None = None,
) -> Comparison:
    """Difference (challenger - control) with interval, fixed and sequential p-values.

    ``metric`` "accuracy" means 0/1 outcomes (proportion tests); anything else is a mean
    (Welch). The verdict follows the always-valid p-value; "no detectable difference"
    needs the sequential sample size, otherwise there is not enough data yet.
    """
    a, b = np.asarray(control, float), np.asarray(challenger, float)
    smaller = min(len(a), len(b))
    binary = metric == "accuracy"
    planned, tau2 = sample_size(a, binary, min_detectable_effect, smaller)
    result = Comparison(
        challenger=challenger_name,
        control=control_name,
        metric=metric,
        difference=None,
        p_value=None,
        always_valid_p_value=None,
        sample_size=planned,
        verdict=Verdict.SRM
        if srm_p_value is not None and srm_p_value < SRM_ALPHA
        else Verdict.NOT_ENOUGH_DATA,
    )
    if smaller < 2:
        return result
    difference = float(b.mean() - a.mean())
    standard_error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if binary:  # Newcombe's score interval: sane at 0% or 100% where Wald collapses
        low, high = confint_proportions_2indep(
            b.sum(), len(b), a.sum(), len(a), method="newcomb", alpha=ALPHA
        )
    else:
        z = stats.norm.ppf(1 - ALPHA / 2)
        low, high = difference - z * standard_error, difference + z * standard_error
    result.difference = Interval(estimate=difference, low=float(low), high=float(high))
    if standard_error == 0:
        result.p_value = 1.0 if difference == 0 else 0.0
    elif binary:
        result.p_value = float(proportions_ztest([b.sum(), a.sum()], [len(b), len(a)])[1])
    else:
        result.p_value = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    if tau2 is None:  # no spread in the control yet: mix over the pooled spread
        tau2 = (0.1 * (float(np.concatenate([a, b]).std(ddof=1)) or 1.0)) ** 2
    result.always_valid_p_value = always_valid_p_value(a, b, tau2, binary=binary)
    if result.verdict is Verdict.SRM or smaller < min_samples:
        return result
    if result.always_valid_p_value is not None and result.always_valid_p_value < ALPHA:
        better = (difference > 0) == higher_is_better
        result.verdict = Verdict.BETTER if better else Verdict.WORSE
    elif planned is None or smaller >= planned.sequential:
        result.verdict = Verdict.NO_DIFFERENCE
    return result
