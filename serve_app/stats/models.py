"""The result models of the experiment statistics, the metrics they compare and the
constants the modules of :mod:`serve_app.stats` share."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from raysplit.core.events import RANDOMISED as RANDOMISED  # re-exported: one definition
from raysplit.eventstore.aggregates import AssignmentKind
from serve_app.stats.common import Interval, SampleSize, Verdict
from serve_app.stats.settings import ALPHA, LABEL_COVERAGE_ALPHA, SRM_ALPHA

SCHEMA_VERSION = 1  # of ExperimentStatistics' JSON; bump on any incompatible change


class Metric(StrEnum):
    ACCURACY = "accuracy"  # classifiers: correct / labelled, higher is better
    MAE = "mae"  # regressors: abs_error_sum / labelled, lower is better
    ERROR_RATE = "error_rate"  # guardrail: errors / requests, lower is better
    LOG_LATENCY = "log_latency"  # guardrail: mean ln(latency_ms) of answered, lower is better


HIGHER_IS_BETTER = {
    Metric.ACCURACY: True,
    Metric.MAE: False,
    Metric.ERROR_RATE: False,
    Metric.LOG_LATENCY: False,
}
BINARY = {Metric.ACCURACY, Metric.ERROR_RATE}


class SampleRatioStratum(BaseModel):
    """One epoch's randomised assignments of one kind against that epoch's own shares."""

    epoch: int
    assignment: AssignmentKind
    counted_in: str = Field(description="'requests' (split) or 'units' (sticky: users)")
    observed: dict[str, int]
    expected: dict[str, float]
    unexpected: dict[str, int] = Field(
        {}, description="assignments to variants without a share in this epoch"
    )
    statistic: float | None
    df: int
    p_value: float | None = Field(description="None: too few to test (expected < 5)")
    always_valid_p_value: float | None = Field(
        None, description="this stratum's sequential (Dirichlet-multinomial) p-value"
    )
    adjusted_p_value: float | None = Field(
        None, description="the always-valid p-value after Holm over the tested strata"
    )


class SampleRatio(BaseModel):
    """The sample-ratio check of every stratum, and whether it raises the alarm.

    ``statistic``/``p_value``: the per-stratum Pearson chi-squares summed (the fixed-horizon
    test of all strata at once), shown for reference. The alarm uses always-valid
    p-values, since the report re-checks at every refresh: each stratum's and their
    product's Dirichlet-multinomial Bayes factor. ``always_valid_p_value`` is the smaller
    of the smallest Holm-adjusted stratum one (at 90% of the level) and the combined one
    (at 10%), so one bad epoch is not diluted by healthy ones and many small deviations
    still add up.
    """

    statistic: float | None
    df: int
    p_value: float | None
    always_valid_p_value: float | None = None
    alpha: float = SRM_ALPHA
    flagged: bool
    strata: list[SampleRatioStratum]
    notes: list[str] = []


class StratumEffect(BaseModel):
    """A comparison within one (epoch, assignment) stratum, and its weight in the total."""

    epoch: int
    assignment: AssignmentKind
    control_n: int
    challenger_n: int
    control_mean: float | None
    challenger_mean: float | None
    difference: float | None
    weight: float = Field(description="share of the combined estimate (sums to 1)")
    unit: Literal["request", "user"] = Field(
        "request",
        description="what the variance counts as one draw: a request (split traffic) or a"
        " user (sticky traffic, randomised by user)",
    )


class StratifiedComparison(BaseModel):
    """Challenger minus control on one metric, estimated within strata and combined.

    ``difference`` is the stratified estimate and its 95% interval; ``pooled_difference``
    (all strata summed) is shown only for contrast, it is biased when shares and base rate
    move together. ``ratio`` (latency) is ``exp`` of the log-latency difference: the
    challenger's geometric-mean latency over the control's.
    """

    challenger: str
    control: str
    metric: Metric
    higher_is_better: bool
    control_n: int
    challenger_n: int
    control_mean: float | None
    challenger_mean: float | None
    difference: Interval | None
    pooled_difference: Interval | None
    ratio: Interval | None = None
    p_value: float | None
    always_valid_p_value: float | None
    looks: int = Field(description="bucket boundaries at which the mSPRT looked")
    adjusted_p_value: float | None = Field(description="Holm across the family")
    adjusted_always_valid_p_value: float | None = Field(description="Holm across the family")
    sample_size: SampleSize | None
    strata: list[StratumEffect]
    variance_reduction: float | None = Field(
        None,
        description="CUPED: the share of the split strata's variance the covariate (the"
        " control model's confidence in each request) removed, final look",
    )
    design_effect: float | None = Field(
        None,
        description="sticky strata's variance per user over their variance per request"
        " (>= 1): how much wider the interval is for counting users, not requests",
    )
    verdict: Verdict


class PairedComparison(BaseModel):
    """A shadow against the live variant on the same labelled requests (shadow - live).

    Classifiers: McNemar on the discordant pairs (exact binomial below
    ``EXACT_MCNEMAR_BELOW``), the accuracy difference with an Agresti-Min interval.
    Regressors: a paired t on ``|shadow error| - |live error|``.
    """

    shadow: str
    metric: Metric
    higher_is_better: bool
    pairs: int
    live_only: int = 0
    shadow_only: int = 0
    exact: bool = False
    difference: Interval | None
    p_value: float | None
    always_valid_p_value: float | None
    looks: int
    adjusted_p_value: float | None
    adjusted_always_valid_p_value: float | None
    verdict: Verdict


class VariantCoverage(BaseModel):
    variant: str
    live: bool
    answered: int
    labelled: int
    coverage: float | None = Field(description="labelled / answered")


class LabelDelay(BaseModel):
    samples: int
    median_s: float | None
    p95_s: float | None


class LabelCoverage(BaseModel):
    """Share of answered requests that got a label, and whether it differs between live
    variants: labels missing more often for one variant bias its accuracy, so a difference
    is a validity warning. Tested per stratum (a chi-square of labelled/unlabelled by
    variant) and combined by summing, like the sample-ratio check, because coverage moves
    with time (recent requests have no labels yet) while the shares move between epochs."""

    variants: list[VariantCoverage]
    statistic: float | None
    df: int
    p_value: float | None
    alpha: float = LABEL_COVERAGE_ALPHA
    flagged: bool
    delay: LabelDelay


class ForcedTraffic(BaseModel):
    """Forced (X-Variant) requests: never compared, never in the sample-ratio check."""

    variant: str
    requests: int
    errors: int
    labelled: int
    correct: int


class ChallengerSummary(BaseModel):
    challenger: str
    quality: Verdict
    error_rate: Verdict | None
    latency: Verdict | None
    summary: str = Field(description="e.g. 'as accurate but slower (1.93x latency)'")


class ExperimentStatistics(BaseModel):
    """Everything issue 15 asks of the statistics, for one experiment."""

    schema_version: int = SCHEMA_VERSION
    experiment: str
    task: str
    control: str | None
    alpha: float = ALPHA
    sample_ratio: SampleRatio
    comparisons: list[StratifiedComparison]
    guardrails: list[StratifiedComparison]
    shadows: list[PairedComparison]
    labels: LabelCoverage
    forced: list[ForcedTraffic]
    summaries: list[ChallengerSummary]
    warnings: list[str]
