"""Challenger against control on one metric, estimated within strata and combined.

* **Strata.** Within one allocation epoch (and one assignment kind) assignment is
  independent of time, so a difference between two variants there is not confounded by a
  base rate that moves over the day. Across epochs it is: when the challenger's share grows
  while the base rate rises, the pooled difference mixes the two (Simpson's paradox). So
  every comparison is estimated per stratum ``(epoch, assignment)`` and combined.
* **The unit.** Split traffic is randomised per request and its variance is a request's.
  Sticky traffic is randomised per user: its variance is computed per user
  (:mod:`serve_app.stats.clustered`), at the latest look, and the ratio of the two (the
  design effect, at least 1) widens the sticky strata at every look.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from raysplit.eventstore.aggregates import AssignmentKind, Cell, UnitMoments
from serve_app.stats.clustered import clustered_variance
from serve_app.stats.common import Interval, Verdict
from serve_app.stats.inference import _interval, _z_p_value, msprt_p_value
from serve_app.stats.models import (
    BINARY,
    HIGHER_IS_BETTER,
    RANDOMISED,
    Metric,
    StratifiedComparison,
    StratumEffect,
)
from serve_app.stats.sample_size import _default_effect, _sample_size
from serve_app.stats.settings import ALPHA, MIN_EXPECTED_EVENTS, MIN_SEQUENTIAL_SAMPLES

# (observations, sum, sum of squares) of a metric in one cell, then the covariate's
# (observations with one, sum, sum of squares, sum of covariate x outcome); for 0/1
# outcomes the sum of squares is the sum. Only the quality metrics carry a covariate.
_MOMENTS: dict[Metric, Callable[[Cell], tuple[float, ...]]] = {
    Metric.ACCURACY: lambda c: (
        c.labelled,
        c.correct,
        c.correct,
        c.cov_n,
        c.cov_sum,
        c.cov_sq,
        c.cov_y,
    ),
    Metric.MAE: lambda c: (
        c.labelled,
        c.abs_error_sum,
        c.abs_error_sq,
        c.cov_n,
        c.cov_sum,
        c.cov_sq,
        c.cov_y,
    ),
    Metric.ERROR_RATE: lambda c: (c.requests, c.errors, c.errors, 0, 0, 0, 0),
    Metric.LOG_LATENCY: lambda c: (c.answered, c.log_latency_sum, c.log_latency_sq, 0, 0, 0, 0),
}
_KINDS = 7  # moments per cell


# stratum (epoch, assignment kind) -> its column in the moment arrays
_Strata = dict[tuple[int, AssignmentKind], int]


@dataclass(frozen=True)
class _Cumulative:
    """One arm's cumulative moments: arrays of shape (looks, strata)."""

    n: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    cov_n: np.ndarray
    cov_sum: np.ndarray
    cov_sq: np.ndarray
    cov_y: np.ndarray


def _cumulate(
    cells: Iterable[Cell],
    metric: Metric,
    strata: _Strata,
    looks: dict[int, int],
) -> _Cumulative:
    moments = np.zeros((_KINDS, len(looks), len(strata)))
    for c in cells:
        moments[:, looks[c.bucket], strata[(c.epoch, c.assignment)]] += _MOMENTS[metric](c)
    return _Cumulative(*np.cumsum(moments, axis=1))


@dataclass(frozen=True)
class _Estimate:
    """Combined difference per look: estimate, its variance for the interval, its variance
    for the test (pooled under the null for 0/1 outcomes) and the per-stratum parts."""

    estimate: np.ndarray
    variance: np.ndarray
    null_variance: np.ndarray
    weights: np.ndarray  # (looks, strata), rows sum to 1 where defined
    control_mean: np.ndarray  # (looks, strata)
    challenger_mean: np.ndarray
    unit_variance: np.ndarray  # per-observation variance of both arms summed, final look
    parts: np.ndarray  # (looks, strata): each stratum's share of ``variance``
    null_parts: np.ndarray  # and of ``null_variance``
    reduction: float | None = None  # CUPED: 1 - adjusted / unadjusted variance, final look


def _adjusted(
    a: _Cumulative, b: _Cumulative, adjustable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CUPED (Deng et al. 2013) per look and stratum: the difference of the arms' means of
    ``y - theta * x``, with ``theta`` the covariate's regression slope pooled over both arms
    within the stratum. The covariate is the same function of the request in both arms, so
    the adjusted difference estimates the same effect with ``1 - rho^2`` of the variance.
    Returns where it applies (every labelled observation of both arms has a covariate, the
    covariate varies, the stratum is ``adjustable``), the difference and its variance."""
    n = a.n + b.n
    with np.errstate(divide="ignore", invalid="ignore"):
        sx, sy = a.cov_sum + b.cov_sum, a.total + b.total
        var_x = a.cov_sq + b.cov_sq - sx**2 / n
        theta = (a.cov_y + b.cov_y - sx * sy / n) / var_x
        valid = (
            adjustable[None, :]
            & (a.cov_n == a.n)
            & (b.cov_n == b.n)
            & (a.n >= 2)
            & (b.n >= 2)
            & (var_x > 1e-9 * n)
        )
        means, variances = [], []
        for arm in (a, b):
            mean = (arm.total - theta * arm.cov_sum) / arm.n
            squares = arm.squares - 2 * theta * arm.cov_y + theta**2 * arm.cov_sq
            spread = np.maximum(squares - arm.n * mean**2, 0) / (arm.n - 1)
            means.append(mean)
            variances.append(spread / arm.n)
    return valid, means[1] - means[0], variances[0] + variances[1]


def _combine(
    control: _Cumulative,
    challenger: _Cumulative,
    binary: bool,
    adjustable: np.ndarray | None = None,
) -> _Estimate:
    """Cochran-Mantel-Haenszel-weighted difference of means across strata.

    Weights are ``n_control * n_challenger / (n_control + n_challenger)``: they depend on
    counts only, never on outcomes, so the estimate stays unbiased where inverse-variance
    weights (variances estimated from the same data, correlated with the means for 0/1
    outcomes and absolute errors) would not; and with equal per-observation variance across
    strata they are the inverse-variance weights, so the sequence of estimates has the
    independent-increment structure the mSPRT assumes. For 0/1 outcomes the test variance
    uses each stratum's pooled rate (the Mantel-Haenszel test), the interval each arm's own
    (Agresti-Caffo adjusted).
    """
    na, nb = control.n, challenger.n
    least = 1 if binary else 2  # a sample variance needs two
    usable = (na >= least) & (nb >= least)
    with np.errstate(divide="ignore", invalid="ignore"):
        ma, mb = control.total / na, challenger.total / nb
        if binary:
            pooled = (control.total + challenger.total) / (na + nb)
            null_part = pooled * (1 - pooled) * (1 / na + 1 / nb)
            # Agresti-Caffo: each arm's rate with one success and one failure added, so a
            # perfect (or hopeless) small arm does not claim zero variance and collapse
            # the interval (190/200 against 20/20 gave [0.020, 0.080] with p = 0.31)
            ta = (control.total + 1) / (na + 2)
            tb = (challenger.total + 1) / (nb + 2)
            part = ta * (1 - ta) / (na + 2) + tb * (1 - tb) / (nb + 2)
        else:
            va = np.maximum(control.squares - control.total * ma, 0) / (na - 1)
            vb = np.maximum(challenger.squares - challenger.total * mb, 0) / (nb - 1)
            null_part = va / na + vb / nb
            part = null_part
        w = np.where(usable, na * nb / (na + nb), 0.0)
        w_sum = w.sum(axis=1, keepdims=True)
        weights = w / w_sum
        difference = np.where(usable, mb - ma, 0.0)
        unadjusted = np.sum(weights**2 * np.where(usable, part, 0.0), axis=1)
        reduction = None
        if adjustable is not None:
            valid, adjusted, adjusted_var = _adjusted(control, challenger, adjustable)
            valid &= usable
            difference = np.where(valid, adjusted, difference)
            part = np.where(valid, adjusted_var, part)
            null_part = np.where(valid, adjusted_var, null_part)
        estimate = np.sum(weights * difference, axis=1)
        parts = weights**2 * np.where(usable, part, 0.0)
        null_parts = weights**2 * np.where(usable, null_part, 0.0)
        variance = np.sum(parts, axis=1)
        null_variance = np.sum(null_parts, axis=1)
        if adjustable is not None and valid[-1].any() and unadjusted[-1] > 0:
            reduction = float(1 - variance[-1] / unadjusted[-1])
        if binary:  # per observation, under the null, in the final look's pooled rate
            rate = (control.total[-1].sum() + challenger.total[-1].sum()) / (
                na[-1].sum() + nb[-1].sum()
            )
            unit_variance = 2 * rate * (1 - rate)
        else:
            unit_variance = np.sum(weights[-1] * np.where(usable[-1], va[-1] + vb[-1], 0.0))
    return _Estimate(
        estimate=estimate,
        variance=variance,
        null_variance=null_variance,
        weights=weights,
        control_mean=np.where(na > 0, ma, np.nan),
        challenger_mean=np.where(nb > 0, mb, np.nan),
        unit_variance=np.asarray(unit_variance, dtype=float) * (1 - (reduction or 0.0)),
        parts=parts,
        null_parts=null_parts,
        reduction=reduction,
    )


def _per_user(
    est: _Estimate,
    strata: _Strata,
    arms: dict[str, _Cumulative],
    moments: Sequence[UnitMoments],
    metric: Metric,
) -> tuple[_Estimate, float | None]:
    """``est`` with its sticky strata's variance counted per user: the per-user variance
    over the per-request one at the final look (the design effect, at least 1, so a
    variance is never narrowed below the request's) widens those strata at every look.
    ``arms`` maps the control and the challenger (in that order) to their moments."""
    sticky = {j: epoch for (epoch, kind), j in strata.items() if kind is AssignmentKind.STICKY}
    naive = float(est.parts[-1, list(sticky)].sum()) if sticky else 0.0
    naive_null = float(est.null_parts[-1, list(sticky)].sum()) if sticky else 0.0
    if not moments or naive <= 0:
        return est, None
    coefficients, own, pooled = {}, {}, {}
    weights = est.weights[-1]
    for sign, (variant, arm) in zip((-1.0, 1.0), arms.items(), strict=True):
        for j, epoch in sticky.items():
            n = arm.n[-1, j]
            if n > 0 and weights[j] > 0:
                coefficients[(variant, epoch)] = sign * weights[j] / n
                own[(variant, epoch)] = arm.total[-1, j] / n
                both = sum(a.n[-1, j] for a in arms.values())
                pooled[(variant, epoch)] = sum(a.total[-1, j] for a in arms.values()) / both
    columns = list(sticky)
    effect = max(1.0, clustered_variance(moments, metric, coefficients, own) / naive)
    null_effect = (
        max(1.0, clustered_variance(moments, metric, coefficients, pooled) / naive_null)
        if naive_null > 0
        else effect
    )
    variance = est.variance + (effect - 1) * est.parts[:, columns].sum(axis=1)
    null_variance = est.null_variance + (null_effect - 1) * est.null_parts[:, columns].sum(axis=1)
    overall = float(variance[-1] / est.variance[-1]) if est.variance[-1] > 0 else 1.0
    adjusted = replace(
        est,
        variance=variance,
        null_variance=null_variance,
        unit_variance=est.unit_variance * overall,
    )
    return adjusted, effect


def _split(strata: _Strata) -> np.ndarray:
    """Which strata CUPED adjusts: split traffic's. Sticky strata keep the per-user variance
    of the unadjusted outcome (the per-user sums hold no covariate)."""
    split = np.zeros(len(strata), dtype=bool)
    for (_, kind), j in strata.items():
        split[j] = kind is AssignmentKind.SPLIT
    return split


def _randomised_arms(
    cells: Sequence[Cell], control: str, challenger: str
) -> tuple[list[Cell], _Strata, dict[int, int]]:
    """The two arms' split and sticky cells, with their strata ``(epoch, assignment)`` and
    their looks (buckets) indexed in sorted order: only randomised traffic is comparable."""
    mine = [c for c in cells if c.assignment in RANDOMISED and c.variant in (control, challenger)]
    strata = {k: i for i, k in enumerate(sorted({(c.epoch, c.assignment) for c in mine}))}
    looks = {b: i for i, b in enumerate(sorted({c.bucket for c in mine}))}
    return mine, strata, looks


def _descriptive(
    control: str,
    challenger: str,
    metric: Metric,
    a: _Cumulative,
    b: _Cumulative,
    any_looks: bool,
) -> StratifiedComparison:
    """Counts and raw means only, verdict "not enough data": what is reported when there is
    nothing to compare, and the base the inference fills in when there is."""
    n_control = int(a.n[-1].sum()) if any_looks else 0
    n_challenger = int(b.n[-1].sum()) if any_looks else 0
    return StratifiedComparison(
        challenger=challenger,
        control=control,
        metric=metric,
        higher_is_better=HIGHER_IS_BETTER[metric],
        control_n=n_control,
        challenger_n=n_challenger,
        control_mean=float(a.total[-1].sum() / n_control) if n_control else None,
        challenger_mean=float(b.total[-1].sum() / n_challenger) if n_challenger else None,
        difference=None,
        pooled_difference=None,
        p_value=None,
        always_valid_p_value=None,
        looks=0,
        adjusted_p_value=None,
        adjusted_always_valid_p_value=None,
        sample_size=None,
        strata=[],
        verdict=Verdict.NOT_ENOUGH_DATA,
    )


def _stratum_effects(
    strata: _Strata, a: _Cumulative, b: _Cumulative, est: _Estimate
) -> list[StratumEffect]:
    """Each stratum's counts, means, difference and weight at the final look, so a reader
    can see which epochs drive the combined estimate."""
    return [
        StratumEffect(
            epoch=epoch,
            assignment=kind,
            control_n=int(a.n[-1, i]),
            challenger_n=int(b.n[-1, i]),
            control_mean=_finite(est.control_mean[-1, i]),
            challenger_mean=_finite(est.challenger_mean[-1, i]),
            difference=_finite(est.challenger_mean[-1, i] - est.control_mean[-1, i]),
            weight=_finite(est.weights[-1, i]) or 0.0,
            unit="user" if kind is AssignmentKind.STICKY else "request",
        )
        for (epoch, kind), i in strata.items()
    ]


def _final_look(arm: _Cumulative) -> _Cumulative:
    """The final look with all strata summed into one: the unstratified (pooled) arm."""
    return _Cumulative(*(x[-1:].sum(axis=1, keepdims=True) for x in vars(arm).values()))


def _fill_fixed_horizon(
    result: StratifiedComparison,
    a: _Cumulative,
    b: _Cumulative,
    est: _Estimate,
    binary: bool,
) -> None:
    """Final-look interval (and latency ratio), the pooled contrast and the z p-value."""
    final = float(est.estimate[-1])
    result.difference = _interval(final, float(est.variance[-1]))
    if result.metric is Metric.LOG_LATENCY and result.difference is not None:
        d = result.difference
        result.ratio = Interval(
            estimate=math.exp(d.estimate), low=math.exp(d.low), high=math.exp(d.high)
        )
    pooled = _combine(_final_look(a), _final_look(b), binary)
    result.pooled_difference = _interval(float(pooled.estimate[0]), float(pooled.variance[0]))
    result.p_value = _z_p_value(final, float(est.null_variance[-1]))


def _fill_sequential(
    result: StratifiedComparison,
    a: _Cumulative,
    b: _Cumulative,
    est: _Estimate,
    min_samples: int,
    min_detectable_effect: float | None,
) -> None:
    """The mSPRT over the looks where both arms have ``min_samples``, and the sample sizes
    for the same effect (tau^2 is its square), so the verdict can tell "no difference" from
    "too early"."""
    metric = result.metric
    effect = min_detectable_effect or _default_effect(metric, result.control_mean)
    eligible = (
        (a.n.sum(axis=1) >= max(min_samples, 1))
        & (b.n.sum(axis=1) >= max(min_samples, 1))
        & (expected_events(a, b, metric) >= MIN_EXPECTED_EVENTS)
    )
    result.looks = int(eligible.sum())
    if result.looks:
        result.always_valid_p_value = msprt_p_value(
            est.estimate[eligible], est.null_variance[eligible], effect**2
        )
    result.sample_size = _sample_size(
        metric,
        effect,
        result.control_mean,
        float(est.unit_variance),
        float(est.null_variance[-1]),
    )


def expected_events(a: _Cumulative, b: _Cumulative, metric: Metric) -> np.ndarray:
    """Per look, the errors either arm expects at the pooled error rate (infinite for the
    other metrics): the normal approximation behind the mSPRT needs events, not requests,
    and a 0.5% error rate gives half an error per 100 requests. The error rate is the rare
    rate among the metrics; the quality test keeps its sample minimum."""
    na, nb = a.n.sum(axis=1), b.n.sum(axis=1)
    if metric is not Metric.ERROR_RATE:
        return np.full(na.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = (a.total.sum(axis=1) + b.total.sum(axis=1)) / (na + nb)
    return np.nan_to_num(np.minimum(na, nb) * rate)


def stratified_comparison(
    cells: Sequence[Cell],
    control: str,
    challenger: str,
    metric: Metric,
    min_samples: int = MIN_SEQUENTIAL_SAMPLES,
    min_detectable_effect: float | None = None,
    unit_moments: Sequence[UnitMoments] = (),
) -> StratifiedComparison:
    """Challenger minus control on ``metric`` over split and sticky cells only.

    Fixed-horizon: the stratified estimate with a 95% normal interval and a two-sided z
    p-value. Always-valid: the mSPRT of the same stratified estimate at every bucket
    boundary (cumulative over buckets), from the first boundary at which both arms have
    ``min_samples`` observations; tau^2 is the squared minimum detectable effect. The
    verdict here is unadjusted; :func:`experiment_statistics` re-decides after Holm.
    Sticky strata count users as the unit when ``unit_moments`` are given.
    """
    mine, strata, looks = _randomised_arms(cells, control, challenger)
    binary = metric in BINARY
    a = _cumulate((c for c in mine if c.variant == control), metric, strata, looks)
    b = _cumulate((c for c in mine if c.variant == challenger), metric, strata, looks)
    result = _descriptive(control, challenger, metric, a, b, bool(looks))
    if not looks:
        return result
    est, result.design_effect = _per_user(
        _combine(a, b, binary, _split(strata)),
        strata,
        {control: a, challenger: b},
        unit_moments,
        metric,
    )
    result.variance_reduction = est.reduction
    result.strata = _stratum_effects(strata, a, b, est)
    if not np.isfinite(float(est.estimate[-1])) or not (est.weights[-1] > 0).any():
        return result
    _fill_fixed_horizon(result, a, b, est, binary)
    _fill_sequential(result, a, b, est, min_samples, min_detectable_effect)
    result.adjusted_p_value = result.p_value
    result.adjusted_always_valid_p_value = result.always_valid_p_value
    result.verdict = _decide(result, srm=False, min_samples=min_samples)
    return result


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _decide(c: StratifiedComparison, srm: bool, min_samples: int) -> Verdict:
    """SRM first; then the (adjusted) always-valid p-value; "no detectable difference" only
    once the effective sample reaches the sequential test's 80%-power size."""
    if srm:
        return Verdict.SRM
    if c.difference is None or min(c.control_n, c.challenger_n) < min_samples:
        return Verdict.NOT_ENOUGH_DATA
    p = c.adjusted_always_valid_p_value
    if p is not None and p < ALPHA:
        better = (c.difference.estimate > 0) == c.higher_is_better
        return Verdict.BETTER if better else Verdict.WORSE
    if c.sample_size is None or c.sample_size.collected >= c.sample_size.sequential:
        return Verdict.NO_DIFFERENCE
    return Verdict.NOT_ENOUGH_DATA


@dataclass(frozen=True)
class StratifiedLooks:
    """The stratified difference (challenger - control) at every bucket boundary.

    Arrays have one entry per look (cumulative over buckets, in bucket order), the same
    numbers :func:`stratified_comparison` feeds to its mSPRT: ``variance`` from each arm's
    own spread (Agresti-Caffo for 0/1 outcomes), ``null_variance`` pooled under "no
    difference" for 0/1 outcomes (equal to ``variance`` otherwise). ``control_mean`` is the
    control's mean under the same stratum weights; ``*_n`` are observations summed over
    strata. Looks where no stratum has both arms carry NaN.
    """

    buckets: np.ndarray
    estimate: np.ndarray
    variance: np.ndarray
    null_variance: np.ndarray
    control_mean: np.ndarray
    control_n: np.ndarray
    challenger_n: np.ndarray
    expected_events: np.ndarray  # see expected_events(): looks below the floor are not tested


def stratified_looks(
    cells: Sequence[Cell],
    control: str,
    challenger: str,
    metric: Metric,
    unit_moments: Sequence[UnitMoments] = (),
) -> StratifiedLooks | None:
    """Per-look stratified estimate and variances over split and sticky cells (as in
    :func:`stratified_comparison`), for callers that test against a shifted null (a
    non-inferiority margin, a guardrail threshold). None when there are no such cells."""
    mine, strata, looks = _randomised_arms(cells, control, challenger)
    if not mine:
        return None
    buckets = list(looks)
    # _cumulate's sums with one scatter-add (this runs at every evaluation of a rollout)
    moments = np.zeros((2, _KINDS, len(looks), len(strata)))
    np.add.at(
        moments,
        (
            np.array([c.variant == challenger for c in mine], dtype=int),
            slice(None),
            np.array([looks[c.bucket] for c in mine], dtype=int),
            np.array([strata[(c.epoch, c.assignment)] for c in mine], dtype=int),
        ),
        np.array([_MOMENTS[metric](c) for c in mine], dtype=float),
    )
    a, b = (_Cumulative(*np.cumsum(arm, axis=1)) for arm in moments)
    arms = {control: a, challenger: b}
    combined = _combine(a, b, metric in BINARY, _split(strata))
    est, _ = _per_user(combined, strata, arms, unit_moments, metric)
    with np.errstate(invalid="ignore"):
        control_mean = np.nansum(est.weights * est.control_mean, axis=1)
    defined = np.isfinite(est.estimate) & (est.weights > 0).any(axis=1)
    return StratifiedLooks(
        buckets=np.asarray(buckets),
        estimate=np.where(defined, est.estimate, np.nan),
        variance=np.where(defined, est.variance, np.nan),
        null_variance=np.where(defined, est.null_variance, np.nan),
        control_mean=np.where(defined, control_mean, np.nan),
        control_n=a.n.sum(axis=1),
        challenger_n=b.n.sum(axis=1),
        expected_events=expected_events(a, b, metric),
    )
