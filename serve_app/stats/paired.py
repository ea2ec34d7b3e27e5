"""Shadows against the live variant on the same labelled requests: McNemar or a paired t."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from raysplit.eventstore.aggregates import PairedCell
from serve_app.stats.common import Interval, Verdict
from serve_app.stats.inference import _interval, msprt_p_value
from serve_app.stats.models import HIGHER_IS_BETTER, Metric, PairedComparison
from serve_app.stats.settings import (
    ALPHA,
    DEFAULT_ACCURACY_EFFECT,
    DEFAULT_RELATIVE_ERROR_EFFECT,
    EXACT_MCNEMAR_BELOW,
    MIN_SEQUENTIAL_SAMPLES,
)


@dataclass(frozen=True)
class _PairedLooks:
    """Sums over the pairs up to each look (arrays of one entry per bucket, in order) and
    the paired difference with its variance there, as the mSPRT reads them."""

    n: np.ndarray
    live_only: np.ndarray
    shadow_only: np.ndarray
    estimate: np.ndarray
    variance: np.ndarray


def _paired_looks(mine: Sequence[PairedCell], classification: bool) -> _PairedLooks:
    """Cumulative sums per bucket boundary and the difference at each: the accuracy
    difference with McNemar's null variance, or the mean error difference with its
    squared standard error."""
    buckets = sorted({p.bucket for p in mine})
    index = {b: i for i, b in enumerate(buckets)}
    sums = np.zeros((5, len(buckets)))
    for p in mine:
        sums[:, index[p.bucket]] += (p.pairs, p.live_only, p.shadow_only, p.diff_sum, p.diff_sq)
    n, live_only, shadow_only, diff_sum, diff_sq = np.cumsum(sums, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if classification:
            estimate = (shadow_only - live_only) / n
            variance = (shadow_only + live_only) / n**2  # McNemar's, under the null
        else:
            estimate = diff_sum / n
            variance = np.maximum(diff_sq - diff_sum * estimate, 0) / (n - 1) / n
    return _PairedLooks(n, live_only, shadow_only, estimate, variance)


def _fill_mcnemar(result: PairedComparison, looks: _PairedLooks) -> None:
    """Classifiers at the final look: McNemar's p-value (exact with few discordant pairs)
    and the accuracy difference with its Agresti-Min interval (0.5 added to each cell)."""
    total = int(looks.n[-1])
    b, c = int(looks.live_only[-1]), int(looks.shadow_only[-1])
    result.live_only, result.shadow_only = b, c
    if not total:
        return
    result.exact = b + c < EXACT_MCNEMAR_BELOW
    table = [[0, b], [c, 0]]
    result.p_value = (
        1.0 if b + c == 0 else float(mcnemar(table, exact=result.exact, correction=False).pvalue)
    )
    bs, cs, ns = b + 0.5, c + 0.5, total + 2.0
    d = (cs - bs) / ns
    result.difference = _interval(d, ((bs + cs) - (cs - bs) ** 2 / ns) / ns**2)
    result.difference.estimate = (c - b) / total


def _fill_paired_t(result: PairedComparison, looks: _PairedLooks) -> None:
    """Regressors at the final look (two pairs at least): the paired t interval and p-value
    of the mean difference of absolute errors."""
    total = int(looks.n[-1])
    mean = float(looks.estimate[-1])
    sd = math.sqrt(max(float(looks.variance[-1]) * total, 0.0))
    half = float(stats.t.ppf(1 - ALPHA / 2, total - 1)) * sd / math.sqrt(total)
    result.difference = Interval(estimate=mean, low=mean - half, high=mean + half)
    result.p_value = (
        float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(total)), total - 1))
        if sd > 0
        else (1.0 if mean == 0 else 0.0)
    )


def _paired_effect(
    looks: _PairedLooks, classification: bool, min_detectable_effect: float | None
) -> float:
    """The mSPRT's effect (tau^2 is its square): the one given, else the default accuracy
    effect, or a tenth of the spread of the error differences (paired cells carry
    differences only)."""
    if classification:
        return min_detectable_effect or DEFAULT_ACCURACY_EFFECT
    total = int(looks.n[-1])
    spread = math.sqrt(max(float(looks.variance[-1]) * total, 0.0)) if total >= 2 else 0.0
    return min_detectable_effect or DEFAULT_RELATIVE_ERROR_EFFECT * (spread or 1.0)


def paired_shadow_comparison(
    paired: Sequence[PairedCell],
    shadow: str,
    classification: bool,
    min_samples: int = MIN_SEQUENTIAL_SAMPLES,
    min_detectable_effect: float | None = None,
) -> PairedComparison:
    """Shadow minus live on the same labelled requests.

    Classifiers: McNemar's test on the discordant pairs, exact (binomial) when there are
    fewer than ``EXACT_MCNEMAR_BELOW`` of them, chi-square without continuity correction
    otherwise (the correction makes it conservative); the accuracy difference
    ``(shadow_only - live_only) / pairs`` with the Agresti-Min interval (0.5 added to each
    cell), which keeps its coverage with few discordant pairs. Regressors: a paired t on
    the per-request difference of absolute errors (lower is better). The always-valid
    p-value is the mSPRT of the paired difference at every bucket boundary.
    """
    mine = sorted((p for p in paired if p.shadow == shadow), key=lambda p: p.bucket)
    metric = Metric.ACCURACY if classification else Metric.MAE
    result = PairedComparison(
        shadow=shadow,
        metric=metric,
        higher_is_better=HIGHER_IS_BETTER[metric],
        pairs=sum(p.pairs for p in mine),
        difference=None,
        p_value=None,
        always_valid_p_value=None,
        looks=0,
        adjusted_p_value=None,
        adjusted_always_valid_p_value=None,
        verdict=Verdict.NOT_ENOUGH_DATA,
    )
    if not mine:
        return result
    looks = _paired_looks(mine, classification)
    if classification:
        _fill_mcnemar(result, looks)
    elif int(looks.n[-1]) >= 2:
        _fill_paired_t(result, looks)
    effect = _paired_effect(looks, classification, min_detectable_effect)
    eligible = looks.n >= max(min_samples, 2)
    result.looks = int(eligible.sum())
    if result.looks:
        result.always_valid_p_value = msprt_p_value(
            looks.estimate[eligible], looks.variance[eligible], effect**2
        )
    result.adjusted_p_value = result.p_value
    result.adjusted_always_valid_p_value = result.always_valid_p_value
    result.verdict = _decide_paired(result, min_samples)
    return result


def _decide_paired(c: PairedComparison, min_samples: int) -> Verdict:
    if c.difference is None or c.pairs < min_samples:
        return Verdict.NOT_ENOUGH_DATA
    p = c.adjusted_always_valid_p_value
    if p is not None and p < ALPHA:
        better = (c.difference.estimate > 0) == c.higher_is_better
        return Verdict.BETTER if better else Verdict.WORSE
    return Verdict.NO_DIFFERENCE
