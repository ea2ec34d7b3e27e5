"""A/B statistics for one challenger against the control: pure functions, no I/O.

Fixed-horizon tests come from statsmodels and scipy. The always-valid p-value is the
mixture sequential probability ratio test (mSPRT, Johari et al. 2017) on the normal
approximation of the difference, evaluated at every checkpoint of the data in arrival
order and minimised, so it stays valid however often someone looks at a live experiment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from pydantic import BaseModel
from scipy import stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

ALPHA = 0.05
SRM_ALPHA = 0.001


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


class Comparison(BaseModel):
    challenger: str
    control: str
    metric: str
    difference: Interval | None
    p_value: float | None
    always_valid_p_value: float | None
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


def msprt_p_value(difference: float, variance: float, tau2: float) -> float:
    """One mSPRT p-value for a difference with the given variance and mixing variance."""
    if variance <= 0:
        return 1.0
    log_lr = 0.5 * math.log(variance / (variance + tau2)) + (
        tau2 * difference**2 / (2 * variance * (variance + tau2))
    )
    return float(min(1.0, math.exp(-log_lr)))


def always_valid_p_value(
    control: Sequence[float], challenger: Sequence[float], tau2: float, checkpoints: int = 50
) -> float | None:
    """Minimum mSPRT p-value over prefixes of both arms in arrival order."""
    a, b = np.asarray(control, float), np.asarray(challenger, float)
    if len(a) < 2 or len(b) < 2:
        return None
    best = 1.0
    for fraction in np.linspace(0, 1, checkpoints + 1)[1:]:
        na, nb = max(2, int(len(a) * fraction)), max(2, int(len(b) * fraction))
        xa, xb = a[:na], b[:nb]
        variance = xa.var(ddof=1) / na + xb.var(ddof=1) / nb
        best = min(best, msprt_p_value(xb.mean() - xa.mean(), variance, tau2))
    return best


def compare(
    control_name: str,
    challenger_name: str,
    control: Sequence[float],
    challenger: Sequence[float],
    metric: str,
    higher_is_better: bool,
    srm_p_value: float | None,
    min_samples: int = 100,
    tau2: float | None = None,
) -> Comparison:
    """Difference (challenger - control) with interval, fixed and sequential p-values."""
    a, b = np.asarray(control, float), np.asarray(challenger, float)
    if srm_p_value is not None and srm_p_value < SRM_ALPHA:
        verdict = Verdict.SRM
    elif min(len(a), len(b)) < min_samples:
        verdict = None
    else:
        verdict = Verdict.NO_DIFFERENCE
    if min(len(a), len(b)) < 2:
        return Comparison(
            challenger=challenger_name,
            control=control_name,
            metric=metric,
            difference=None,
            p_value=None,
            always_valid_p_value=None,
            verdict=verdict or Verdict.NOT_ENOUGH_DATA,
        )
    difference = float(b.mean() - a.mean())
    standard_error = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    binary = set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}
    if binary:  # Newcombe's score interval: sane at 0% or 100% where Wald collapses
        low, high = confint_proportions_2indep(
            b.sum(), len(b), a.sum(), len(a), method="newcomb", alpha=ALPHA
        )
    else:
        z = stats.norm.ppf(1 - ALPHA / 2)
        low, high = difference - z * standard_error, difference + z * standard_error
    interval = Interval(estimate=difference, low=float(low), high=float(high))
    if standard_error == 0:
        p_value = 1.0 if difference == 0 else 0.0
    elif binary:
        _, p_value = proportions_ztest([b.sum(), a.sum()], [len(b), len(a)])
    else:
        p_value = stats.ttest_ind(b, a, equal_var=False).pvalue
    pooled_sd = float(np.concatenate([a, b]).std(ddof=1)) or 1.0
    sequential = always_valid_p_value(a, b, tau2 if tau2 is not None else (0.1 * pooled_sd) ** 2)
    if verdict is Verdict.NO_DIFFERENCE and sequential is not None and sequential < ALPHA:
        verdict = Verdict.BETTER if (difference > 0) == higher_is_better else Verdict.WORSE
    return Comparison(
        challenger=challenger_name,
        control=control_name,
        metric=metric,
        difference=interval,
        p_value=float(p_value),
        always_valid_p_value=sequential,
        verdict=verdict or Verdict.NOT_ENOUGH_DATA,
    )
