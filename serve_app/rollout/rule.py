"""The rollout's decision rule: one evaluation of a running rollout, from aggregates to one
decision with the figures behind it (issue 16). Pure: no I/O, no Ray, no clock.

Each evaluation takes exactly one of four decisions:

* **rollback** (terminal): the candidate is shown worse than the control on quality, or a
  guardrail is breached (error rate, latency, input PSI), or the sample-ratio check flags
  the router. Shown by always-valid tests, a rollback may come at any evaluation, before
  the step's minimum is in: an mSPRT p-value is valid however often it is looked at, so an
  early look costs nothing in false aborts.
* **hold**: the step's minimum (``min_scored_per_step`` labelled requests of the
  candidate *in this step*, and ``min_step_s`` seconds) is not in yet; or, at the last
  step, the minimum is in but non-inferiority is not shown yet (keep collecting).
* **advance**: not at the last step, the minimum is in and nothing is shown wrong.
* **promote** (terminal): at the last step, the minimum is in, nothing is shown wrong and
  the candidate is shown non-inferior within the margin. This is the rollout's success;
  the controller then does what ``on_success`` says (move the alias, or keep the weights).

**The error rates, whatever the number of looks.** Two promises, each held by a split of
``ALPHA`` = 0.05 between always-valid tests (Bonferroni: the chance that any of them
errs is at most the sum of their levels, at any stopping time):

* *A candidate truly worse by the margin is promoted in at most 5% of rollouts.* Only the
  non-inferiority test can promote, at level ``ALPHA_PROMOTE`` = 0.05.
* *A candidate equal to the control is rolled back in at most 5%.* Four things can roll it
  back, and they share the 0.05: the quality test (worse than the control) at
  ``ALPHA_WORSE`` = 0.02, the error-rate guardrail at ``ALPHA_ERROR_RATE`` = 0.01, the
  latency guardrail at ``ALPHA_LATENCY`` = 0.01, and the sample-ratio check. The latter is
  a fixed-sample chi-square at ``SRM_ALPHA`` = 0.001, not an always-valid test, so it is
  acted on only when a step would otherwise pass (advance or promote): at most one look
  per step, at most ``MAX_STEPS`` = 10 steps, so at most 0.01. (A router defect is thus
  caught before the candidate gets more traffic, not mid-step.) The guardrail nulls are
  "increase at the threshold", so for an equal candidate they are conservative.
  PSI is descriptive (no test) and outside the budget: it is compared with ``max_psi``
  once the step's minimum is in, because PSI of a small sample is biased upwards.

**The tests.** All on the stratified difference (candidate - control) of
:func:`serve_app.stats.stratified_looks`: strata are (allocation epoch,
assignment kind), so each step's epoch is a stratum and moving shares do not confound the
estimate; looks are the bucket boundaries, from the first at which both arms have
``MIN_SEQUENTIAL_SAMPLES`` observations; each p-value is the mSPRT's
(:func:`serve_app.stats.msprt_p_value`), made one-sided by keeping only the
looks at which the estimate has the sign the alternative needs (a subset of the two-sided
test's rejections, so the level holds).

* Quality is accuracy (classifiers, higher is better) or mean absolute error (regressors,
  lower is better); write ``g`` for the difference signed so that positive is better.
  *Worse*: ``g`` against 0 (H0: g >= 0), variance pooled under the null. *Superiority*
  (reported, decides nothing): ``g`` against 0 the other way. *Non-inferiority*:
  ``g + margin`` against 0 (H0: g <= -margin), each arm's own variance. For MAE the margin
  is ``non_inferiority_margin`` times the control's (stratum-weighted) MAE at each look, a
  plug-in whose own uncertainty is ignored. The mixing variance tau^2 is the squared margin
  (the default minimum detectable effect when the margin is 0).
* Error rate: ``increase - max_error_rate_increase`` against 0 (H0: increase <= limit).
* Latency: the aggregates hold sums of ``ln(latency)``, so the ratio they give is the
  geometric-mean latency ratio ``exp(mean log difference)``; it stands in for the p95
  ratio the config names (equal for a latency distribution that is scaled, as a slower
  model's usually is). Tested as ``log difference - ln(max_p95_latency_ratio)`` against 0.
* The guardrails' mixing variance is the squared limit, at least the report's default
  effect (one point of error rate; ln 1.1 of latency); both use each arm's own variance.
* Every test waits for ``MIN_SEQUENTIAL_SAMPLES`` per arm (normal approximation): with a
  smaller ``min_scored_per_step`` a step whose minimum is in holds until then.

Every decision carries its figures; the sample-ratio figures are computed for every
decision but hold (each change of share), since they are only acted on then.

Inputs are the caller's: aggregates restricted to the rollout's epochs, the current step
and when it started; cells of variants other than the control and the candidate enter
only the sample-ratio check. The current step's epochs are those that started at or after
``step_started_at``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, partial

import numpy as np
from pydantic import BaseModel, Field

from raysplit.eventstore.aggregates import Cell, ExperimentAggregates, UnitMoments
from serve_app.config.rollout import MAX_STEPS, RolloutConfig
from serve_app.stats.inference import msprt_p_value
from serve_app.stats.models import RANDOMISED, Metric, SampleRatio
from serve_app.stats.sample_ratio import sample_ratio_by_epoch
from serve_app.stats.settings import (
    ALPHA,
    ALPHA_ERROR_RATE,
    ALPHA_LATENCY,
    ALPHA_PROMOTE,
    ALPHA_WORSE,
    DEFAULT_ACCURACY_EFFECT,
    DEFAULT_ERROR_RATE_EFFECT,
    DEFAULT_LOG_LATENCY_EFFECT,
    DEFAULT_RELATIVE_ERROR_EFFECT,
    MIN_EXPECTED_EVENTS,
    MIN_SEQUENTIAL_SAMPLES,
    SRM_ALPHA,
)
from serve_app.stats.stratified import StratifiedLooks, stratified_looks

ROLLBACK_BUDGET = ALPHA_WORSE + ALPHA_ERROR_RATE + ALPHA_LATENCY + MAX_STEPS * SRM_ALPHA
assert ROLLBACK_BUDGET <= ALPHA + 1e-12, "the rollback tests must share ALPHA"


class DecisionKind(StrEnum):
    HOLD = "hold"
    ADVANCE = "advance"
    ROLLBACK = "rollback"
    PROMOTE = "promote"


class RolloutFigures(BaseModel):
    """The numbers behind a decision. p-values: None when there is no look yet (both arms
    below ``MIN_SEQUENTIAL_SAMPLES``), 1.0 when no look has the sign the test needs."""

    metric: Metric
    step_elapsed_s: float
    control_labelled: int = Field(description="labelled requests of the control in this step")
    candidate_labelled: int = Field(description="labelled requests of the candidate in this step")
    control_labelled_total: int = Field(description="over the rollout's epochs")
    candidate_labelled_total: int
    difference: float | None = Field(
        description="candidate - control, stratified over the rollout (accuracy or MAE)"
    )
    margin: float | None = Field(description="non-inferiority margin in the metric's units")
    non_inferiority_p_value: float | None
    superiority_p_value: float | None
    inferiority_p_value: float | None = Field(description="the 'worse' test")
    error_rate_increase: float | None
    error_rate_p_value: float | None = Field(description="H0: increase <= the limit")
    latency_ratio: float | None = Field(description="geometric-mean latency, candidate/control")
    latency_p_value: float | None = Field(description="H0: ratio <= the limit")
    psi: float | None
    srm_p_value: float | None = Field(
        description="sample-ratio check over the rollout's epochs; computed for every decision"
        " but hold (it is acted on only when a step would pass), None for hold"
    )
    srm_flagged: bool | None


class Decision(BaseModel):
    kind: DecisionKind
    reason: str
    step: int = Field(description="index of the step the decision was taken in")
    share: float = Field(description="candidate's share in that step, percent")
    share_after: float = Field(description="candidate's share the decision asks for, percent")
    figures: RolloutFigures

    @property
    def terminal(self) -> bool:
        return self.kind in (DecisionKind.ROLLBACK, DecisionKind.PROMOTE)


class _Test(BaseModel):
    estimate: float | None  # the last look's, unshifted
    p_value: float | None


def _one_sided(
    statistic: np.ndarray, variance: np.ndarray, eligible: np.ndarray, tau2: float
) -> float | None:
    """mSPRT p-value of H0: statistic <= 0 against > 0, from the eligible looks at which
    the statistic is positive."""
    if not eligible.any():
        return None
    keep = eligible & (statistic > 0) & (variance > 0)
    if not keep.any():
        return 1.0
    p = msprt_p_value(statistic[keep], variance[keep], tau2)
    return 1.0 if p is None else p


def _eligible(looks: StratifiedLooks) -> np.ndarray:
    least = max(MIN_SEQUENTIAL_SAMPLES, 1)
    return (
        (looks.control_n >= least)
        & (looks.challenger_n >= least)
        & (looks.expected_events >= MIN_EXPECTED_EVENTS)
        & np.isfinite(looks.estimate)
        & np.isfinite(looks.variance)
    )


def _last(x: np.ndarray) -> float | None:
    return float(x[-1]) if x.size and np.isfinite(x[-1]) else None


def _guardrail(
    cells: Sequence[Cell],
    moments: Sequence[UnitMoments],
    control: str,
    candidate: str,
    metric: Metric,
    limit: float | None,
    tau: float,
) -> _Test:
    """Candidate - control on a lower-is-better metric against ``limit`` (H0: <= limit)."""
    looks = stratified_looks(cells, control, candidate, metric, moments)
    if looks is None:
        return _Test(estimate=None, p_value=None)
    estimate = _last(looks.estimate)
    if limit is None:
        return _Test(estimate=estimate, p_value=None)
    eligible = _eligible(looks)
    with np.errstate(invalid="ignore"):
        p = _one_sided(looks.estimate - limit, looks.variance, eligible, tau**2)
    return _Test(estimate=estimate, p_value=p)


def _fmt(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


@dataclass(frozen=True)
class _Quality:
    """The quality tests' results, kept as computed (a plain dataclass, no validation), so
    the checks compare and format exactly what the tests returned; None before a look."""

    metric: Metric
    difference: float | None = None
    margin: float | None = None
    p_ni: float | None = None
    p_sup: float | None = None
    p_inf: float | None = None


@dataclass(frozen=True)
class _Evidence:
    """Everything one evaluation reads, gathered before any check, so that the checks are
    plain reads in a fixed order."""

    control: str
    candidate: str
    labelled: dict[str, int]  # this step's labelled requests, by variant
    totals: dict[str, int]  # over the rollout's epochs
    elapsed: float
    quality: _Quality
    errors: _Test
    latency: _Test
    psi: float | None


def _resolve_control(
    config: RolloutConfig, step: int, aggregates: ExperimentAggregates, control: str | None
) -> str:
    """The control to compare with; refuses arguments no decision can be taken on."""
    control = control or aggregates.control
    if control is None:
        raise ValueError("the rollout needs a control: pass one or set aggregates.control")
    if control == config.candidate:
        raise ValueError(f"the candidate '{control}' cannot be its own control")
    if not 0 <= step < len(config.steps):
        raise ValueError(f"step {step} is outside the rollout's {len(config.steps)} steps")
    return control


def _labelled_counts(
    aggregates: ExperimentAggregates, step_started_at: float, control: str, candidate: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Labelled requests per arm in the current step (its epochs started at or after
    ``step_started_at``) and over the rollout: the step's minimum is counted on the first."""
    step_epochs = {e.epoch for e in aggregates.epochs if e.started_at >= step_started_at}
    labelled = {control: 0, candidate: 0}
    totals = {control: 0, candidate: 0}
    for c in aggregates.cells:
        if c.assignment in RANDOMISED and c.variant in labelled:
            totals[c.variant] += c.labelled
            if c.epoch in step_epochs:
                labelled[c.variant] += c.labelled
    return labelled, totals


def _quality_tests(
    config: RolloutConfig, aggregates: ExperimentAggregates, control: str, candidate: str
) -> _Quality:
    """Worse, superiority and non-inferiority on the stratified quality difference, signed
    so that positive is better (accuracy up, MAE down)."""
    metric = Metric.ACCURACY if aggregates.classification else Metric.MAE
    sign = 1.0 if metric is Metric.ACCURACY else -1.0
    looks = stratified_looks(aggregates.cells, control, candidate, metric, aggregates.unit_moments)
    if looks is None:
        return _Quality(metric=metric)
    eligible = _eligible(looks)
    better = sign * looks.estimate  # positive: candidate better
    if metric is Metric.ACCURACY:
        margins = np.full_like(looks.estimate, config.non_inferiority_margin)
        default_tau = DEFAULT_ACCURACY_EFFECT
    else:
        margins = config.non_inferiority_margin * looks.control_mean
        default_tau = DEFAULT_RELATIVE_ERROR_EFFECT * (_last(looks.control_mean) or 0.0)
    difference, margin = _last(looks.estimate), _last(margins)
    tau = margin if margin else default_tau or 1.0
    with np.errstate(invalid="ignore"):
        p_ni = _one_sided(better + margins, looks.variance, eligible, tau**2)
        p_sup = _one_sided(better, looks.null_variance, eligible, tau**2)
        p_inf = _one_sided(-better, looks.null_variance, eligible, tau**2)
    return _Quality(metric, difference, margin, p_ni, p_sup, p_inf)


def _guardrail_tests(
    config: RolloutConfig, aggregates: ExperimentAggregates, control: str, candidate: str
) -> tuple[_Test, _Test]:
    """The error-rate and latency guardrails, each against its configured limit (latency on
    the log scale, where the aggregates hold it)."""
    guard = config.guardrails
    cells, moments = aggregates.cells, aggregates.unit_moments
    errors = _guardrail(
        cells,
        moments,
        control,
        candidate,
        Metric.ERROR_RATE,
        guard.max_error_rate_increase,
        max(guard.max_error_rate_increase or 0.0, DEFAULT_ERROR_RATE_EFFECT),
    )
    log_limit = (
        math.log(guard.max_p95_latency_ratio) if guard.max_p95_latency_ratio is not None else None
    )
    latency = _guardrail(
        cells,
        moments,
        control,
        candidate,
        Metric.LOG_LATENCY,
        log_limit,
        max(log_limit or 0.0, DEFAULT_LOG_LATENCY_EFFECT),
    )
    return errors, latency


def _figures(ev: _Evidence) -> RolloutFigures:
    """The decision's figures; the sample-ratio ones are filled in by :func:`_decision`,
    since they are computed only for a change of share."""
    q, latency = ev.quality, ev.latency
    return RolloutFigures(
        metric=q.metric,
        step_elapsed_s=ev.elapsed,
        control_labelled=ev.labelled[ev.control],
        candidate_labelled=ev.labelled[ev.candidate],
        control_labelled_total=ev.totals[ev.control],
        candidate_labelled_total=ev.totals[ev.candidate],
        difference=q.difference,
        margin=q.margin,
        non_inferiority_p_value=q.p_ni,
        superiority_p_value=q.p_sup,
        inferiority_p_value=q.p_inf,
        error_rate_increase=ev.errors.estimate,
        error_rate_p_value=ev.errors.p_value,
        latency_ratio=math.exp(latency.estimate) if latency.estimate is not None else None,
        latency_p_value=latency.p_value,
        psi=ev.psi,
        srm_p_value=None,
        srm_flagged=None,
    )


def _shown_worse(config: RolloutConfig, ev: _Evidence, figures: RolloutFigures) -> str | None:
    """The reason to roll back if an always-valid test shows the candidate worse (quality,
    then error rate, then latency); these may act at any look, before the step's minimum."""
    q, errors, latency, guard = ev.quality, ev.errors, ev.latency, config.guardrails
    if q.p_inf is not None and q.p_inf < ALPHA_WORSE:
        return (
            f"candidate worse than the control on {q.metric.value}: difference"
            f" {q.difference:+.4g} (always-valid p = {_fmt(q.p_inf)} < {ALPHA_WORSE})"
        )
    if errors.p_value is not None and errors.p_value < ALPHA_ERROR_RATE:
        return (
            f"error-rate guardrail breached: increase {errors.estimate:+.4g} above"
            f" {guard.max_error_rate_increase:g} (always-valid p = {_fmt(errors.p_value)}"
            f" < {ALPHA_ERROR_RATE})"
        )
    if latency.p_value is not None and latency.p_value < ALPHA_LATENCY:
        return (
            f"latency guardrail breached: latency ratio {figures.latency_ratio:.3g} above"
            f" {guard.max_p95_latency_ratio:g} (always-valid p = {_fmt(latency.p_value)}"
            f" < {ALPHA_LATENCY})"
        )
    return None


def _not_ready(config: RolloutConfig, step: int, ev: _Evidence) -> str | None:
    """The reason to hold if the step's minimum (labelled requests, time) is not in, or
    both arms are still too small for any test to look."""
    missing = []
    if ev.labelled[ev.candidate] < config.min_scored_per_step:
        missing.append(
            f"{ev.labelled[ev.candidate]} of {config.min_scored_per_step} labelled requests of"
            f" '{ev.candidate}'"
        )
    if ev.elapsed < config.min_step_s:
        missing.append(f"{ev.elapsed:.0f} of {config.min_step_s:g} s")
    if missing:
        return f"step {step + 1} minimum not in yet: {'; '.join(missing)}"
    if ev.quality.p_inf is None:
        return (
            f"step minimum in, but too few labelled requests to compare (both arms need"
            f" {MIN_SEQUENTIAL_SAMPLES} over the rollout)"
        )
    return None


def _step_outcome(
    config: RolloutConfig, step: int, ev: _Evidence, sample_ratio: Callable[[], SampleRatio]
) -> tuple[DecisionKind, str]:
    """Once the step's minimum is in: drift, then (last step) non-inferiority, then the
    sample-ratio check, which is looked at only when the step would otherwise pass."""
    guard, q, psi = config.guardrails, ev.quality, ev.psi
    last_step = step == len(config.steps) - 1
    if guard.max_psi is not None and psi is not None and psi > guard.max_psi:
        return (
            DecisionKind.ROLLBACK,
            f"input drift guardrail breached: PSI {psi:.3g} > {guard.max_psi:g}",
        )
    if last_step and not (q.p_ni is not None and q.p_ni < ALPHA_PROMOTE):
        return (
            DecisionKind.HOLD,
            f"last step: non-inferiority within {_fmt(q.margin)} not shown yet (always-valid"
            f" p = {_fmt(q.p_ni)}, needs < {ALPHA_PROMOTE}); collecting",
        )
    srm = sample_ratio()
    if srm.flagged:
        return (
            DecisionKind.ROLLBACK,
            "sample-ratio mismatch: the split does not follow the shares (always-valid"
            f" p = {_fmt(srm.always_valid_p_value)} < {SRM_ALPHA})",
        )
    if last_step:
        return (
            DecisionKind.PROMOTE,
            f"candidate non-inferior within {_fmt(q.margin)} {q.metric.value} (always-valid"
            f" p = {_fmt(q.p_ni)} < {ALPHA_PROMOTE}), no guardrail breached",
        )
    return (
        DecisionKind.ADVANCE,
        f"step {step + 1} passed: {ev.labelled[ev.candidate]} labelled, nothing shown wrong"
        f" (worse p = {_fmt(q.p_inf)}, error-rate p = {_fmt(ev.errors.p_value)}, latency p ="
        f" {_fmt(ev.latency.p_value)}); to {config.steps[step + 1]:g}%",
    )


def _decision(
    config: RolloutConfig,
    step: int,
    kind: DecisionKind,
    reason: str,
    figures: RolloutFigures,
    sample_ratio: Callable[[], SampleRatio],
) -> Decision:
    """The decision with its figures and the share it asks for; every change of share
    carries the sample-ratio figures."""
    if kind is not DecisionKind.HOLD:
        srm = sample_ratio()
        figures.srm_p_value, figures.srm_flagged = srm.always_valid_p_value, srm.flagged
    share = config.steps[step]
    after = {
        DecisionKind.HOLD: share,
        DecisionKind.ADVANCE: config.steps[min(step + 1, len(config.steps) - 1)],
        DecisionKind.ROLLBACK: 0.0,
        DecisionKind.PROMOTE: share,
    }[kind]
    return Decision(
        kind=kind, reason=reason, step=step, share=share, share_after=after, figures=figures
    )


def decide(
    config: RolloutConfig,
    step: int,
    step_started_at: float,
    now: float,
    aggregates: ExperimentAggregates,
    candidate_psi: float | None = None,
    control: str | None = None,
) -> Decision:
    """One evaluation of a rollout in step ``step`` (an index into ``config.steps``),
    started at ``step_started_at`` (same clock as ``now`` and the epochs' ``started_at``).
    ``control`` defaults to ``aggregates.control``; ``candidate_psi`` is the largest input
    PSI of the candidate's traffic, if known.

    Precedence: an always-valid rollback, then hold for the step's minimum, then
    :func:`_step_outcome` (drift, last-step non-inferiority, sample ratio, pass)."""
    control = _resolve_control(config, step, aggregates, control)
    candidate = config.candidate
    labelled, totals = _labelled_counts(aggregates, step_started_at, control, candidate)
    quality = _quality_tests(config, aggregates, control, candidate)
    errors, latency = _guardrail_tests(config, aggregates, control, candidate)
    ev = _Evidence(
        control=control,
        candidate=candidate,
        labelled=labelled,
        totals=totals,
        elapsed=now - step_started_at,
        quality=quality,
        errors=errors,
        latency=latency,
        psi=candidate_psi,
    )
    figures = _figures(ev)
    # computed at most once, and only when a step would pass or the share changes
    sample_ratio = cache(
        partial(
            sample_ratio_by_epoch,
            aggregates.cells,
            aggregates.epochs,
            aggregates.units,
            aggregates.units_in_two_arms,
        )
    )
    if (reason := _shown_worse(config, ev, figures)) is not None:
        kind = DecisionKind.ROLLBACK
    elif (reason := _not_ready(config, step, ev)) is not None:
        kind = DecisionKind.HOLD
    else:
        kind, reason = _step_outcome(config, step, ev, sample_ratio)
    return _decision(config, step, kind, reason, figures, sample_ratio)
