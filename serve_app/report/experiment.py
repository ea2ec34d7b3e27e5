"""The experiment report behind ``GET /experiment``, ``raysplit report`` and the gauges
(pure, no I/O): the statistics of :mod:`serve_app.stats` plus what each variant
looks like (versions, shares, latency, quality, label coverage, drift).

Its JSON carries ``schema_version``; version 2 is the first computed from aggregates
(allocation epochs, forced traffic apart, stratified and paired tests).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from raysplit.core.events import RANDOMISED
from raysplit.core.reference_stats import ReferenceStats
from raysplit.eventstore.aggregates import AssignmentKind, Cell, ExperimentAggregates
from raysplit.eventstore.queries import VariantFacts
from serve_app.stats.common import Interval, accuracy_interval
from serve_app.stats.drift import FeatureDrift, feature_drift
from serve_app.stats.experiment import experiment_statistics
from serve_app.stats.models import ExperimentStatistics
from serve_app.stats.settings import Z

REPORT_SCHEMA_VERSION = 2


class Latency(BaseModel):
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Latency | None:
        """Percentiles of ``values`` in milliseconds; None when there are none."""
        if not values:
            return None
        p50, p95, p99 = np.percentile(values, [50, 95, 99]).tolist()
        return cls(p50=p50, p95=p95, p99=p99)


class VariantReport(BaseModel):
    """One variant's traffic and quality. Counts are of randomised traffic (split and
    sticky) for live variants, of copies for shadows; forced requests are counted apart."""

    name: str
    shadow: bool
    model_versions: list[str]
    assigned: int
    served: int
    errors: int
    forced: int = Field(0, description="X-Variant requests: never compared")
    observed_share: float | None = Field(description="share of the latest epoch's traffic")
    expected_share: float | None = Field(description="configured share now")
    latency_ms: Latency | None = Field(description="percentiles of the latest answers")
    feedback: int
    label_coverage: float | None = None
    accuracy: Interval | None = None
    mae: Interval | None = None
    rmse: float | None = None
    agreement_with_live: Interval | None = None
    drift: dict[str, FeatureDrift] | None = None


class ExperimentReport(ExperimentStatistics):
    """The statistics (SRM per epoch, stratified comparisons, guardrails, paired shadows,
    label coverage, forced traffic, verdicts) with each variant's own figures."""

    report_schema_version: int = REPORT_SCHEMA_VERSION
    requests: int = Field(description="live requests, randomised and forced")
    errors: int
    srm_p_value: float | None = Field(
        description="the sample-ratio check, all epochs: always-valid, so an alert may read"
        " it at every refresh"
    )
    epochs: int
    variants: list[VariantReport]
    events: dict[str, Any] | None = None


def _sum(cells: list[Cell], name: str) -> float:
    return sum(getattr(c, name) for c in cells)


def _mean_interval(n: int, total: float, squares: float) -> Interval | None:
    if n < 2:
        return None
    mean = total / n
    variance = max(squares - n * mean * mean, 0.0) / (n - 1)
    half = Z * math.sqrt(variance / n)
    return Interval(estimate=mean, low=mean - half, high=mean + half)


def _variant(
    name: str,
    shadow: bool,
    cells: list[Cell],
    latest_share: float | None,
    expected: float | None,
    facts: VariantFacts | None,
    classification: bool,
) -> VariantReport:
    counted = [c for c in cells if c.assignment in (RANDOMISED if not shadow else ("shadow",))]
    forced = [c for c in cells if c.assignment is AssignmentKind.FORCED]
    requests, errors = int(_sum(counted, "requests")), int(_sum(counted, "errors"))
    labelled = int(_sum(counted, "labelled"))
    report = VariantReport(
        name=name,
        shadow=shadow,
        model_versions=facts.model_versions if facts else [],
        assigned=requests,
        served=requests - errors,
        errors=errors,
        forced=int(_sum(forced, "requests")),
        observed_share=latest_share,
        expected_share=expected,
        latency_ms=Latency.of(facts.recent_latency_ms) if facts else None,
        feedback=labelled,
        label_coverage=labelled / (requests - errors) if requests > errors else None,
    )
    if classification:
        report.accuracy = accuracy_interval(int(_sum(counted, "correct")), labelled)
    elif labelled:
        report.mae = _mean_interval(
            labelled, _sum(counted, "abs_error_sum"), _sum(counted, "abs_error_sq")
        )
        report.rmse = math.sqrt(_sum(counted, "abs_error_sq") / labelled)
    if shadow and facts and facts.agreement and facts.agreement[1]:
        report.agreement_with_live = accuracy_interval(*facts.agreement)
    return report


def _latest_shares(cells: list[Cell]) -> dict[str, float]:
    """Each live variant's share of randomised requests in the latest epoch with any."""
    randomised = [c for c in cells if c.assignment in RANDOMISED]
    if not randomised:
        return {}
    latest = max(c.epoch for c in randomised)
    counts: dict[str, int] = defaultdict(int)
    for cell in randomised:
        if cell.epoch == latest:
            counts[cell.variant] += cell.requests
    total = sum(counts.values())
    return {name: n / total for name, n in counts.items()} if total else {}


def build_report(
    aggregates: ExperimentAggregates,
    facts: dict[str, VariantFacts],
    shares: dict[str, float] | None = None,
    references: dict[str, tuple[ReferenceStats, list[str]]] | None = None,
    recent_inputs: dict[str, list[list[float]]] | None = None,
    min_detectable_effect: float | None = None,
) -> ExperimentReport:
    """``shares``: the configured shares now (None for an experiment no longer served).
    Drift compares a variant's ``recent_inputs`` (its latest ``DRIFT_WINDOW`` answered
    predictions) with the training statistics in ``references``."""
    statistics = experiment_statistics(aggregates, aggregates.control, min_detectable_effect)
    by_variant: dict[str, list[Cell]] = defaultdict(list)
    for cell in aggregates.cells:
        by_variant[cell.variant].append(cell)
    shadows = {
        name
        for name, cells in by_variant.items()
        if all(c.assignment is AssignmentKind.SHADOW for c in cells)
    }
    names = list(shares or {}) + sorted(set(by_variant) - set(shares or {}))
    latest = _latest_shares(aggregates.cells)
    variants = []
    for name in names:
        report = _variant(
            name,
            name in shadows,
            by_variant.get(name, []),
            None if name in shadows else latest.get(name, 0.0 if latest else None),
            (shares or {}).get(name),
            facts.get(name),
            aggregates.classification,
        )
        if references and name in references and recent_inputs and recent_inputs.get(name):
            reference, features = references[name]
            recent = np.array(recent_inputs[name], dtype=float).reshape(-1, len(features))
            report.drift = feature_drift(reference, features, recent)
        variants.append(report)
    live = [v for v in variants if not v.shadow]
    forced = [c for c in aggregates.cells if c.assignment is AssignmentKind.FORCED]
    return ExperimentReport(
        **statistics.model_dump(),
        requests=sum(v.assigned + v.forced for v in live),
        errors=sum(v.errors for v in live) + int(_sum(forced, "errors")),
        srm_p_value=statistics.sample_ratio.always_valid_p_value,
        epochs=len(aggregates.epochs),
        variants=variants,
    )
