"""The experiment over time and the experiments the event store holds, for the results page
(``GET /experiment/timeline``, ``GET /experiments``).

A timeline point is the report as it stood at the end of a time bucket: the same
:func:`serve_app.report.experiment.build_report` run on the aggregates cut at that bucket, so each
accuracy interval, share and always-valid p-value on the page is the figure
``GET /experiment`` would have answered then, never a second computation of it. The
always-valid p-value is valid at every look, so reading it at each bucket is sound.
p95 latency comes from the newest answers (the report's own latency sample), grouped by
point, so only the recent points have one.

Pure: the reads are the event store's (:mod:`raysplit.eventstore.queries`), gathered for
the served experiment in :mod:`serve_app.replica.reading`.
"""

from __future__ import annotations

import bisect

from pydantic import BaseModel, Field

from raysplit.eventstore.aggregates import ExperimentAggregates
from raysplit.eventstore.queries import ExperimentSpan
from serve_app.config.constants import MAX_TIMELINE_POINTS
from serve_app.report.experiment import Latency, build_report
from serve_app.stats.common import Interval
from serve_app.stats.settings import ALPHA


class VariantPoint(BaseModel):
    name: str
    shadow: bool
    requests: int = Field(description="randomised requests so far (copies for a shadow)")
    observed_share: float | None
    accuracy: Interval | None = None
    mae: Interval | None = None
    p95_latency_ms: float | None = Field(description="answers within this point's bucket(s)")


class ComparisonPoint(BaseModel):
    challenger: str
    metric: str
    always_valid_p_value: float | None
    verdict: str


class TimelinePoint(BaseModel):
    at: float = Field(description="end of the point's time bucket, Unix seconds")
    variants: list[VariantPoint]
    comparisons: list[ComparisonPoint]


class ExperimentTimeline(BaseModel):
    experiment: str
    bucket_s: float
    alpha: float
    points: list[TimelinePoint]


class ExperimentEntry(BaseModel):
    experiment: str
    first_at: float = Field(description="start of its first minute with a prediction")
    last_at: float = Field(description="end of its latest minute with a prediction")
    requests: int
    current: bool = Field(description="the experiment this application serves now")


class ExperimentList(BaseModel):
    current: str | None
    experiments: list[ExperimentEntry] = Field(description="most recently active first")


def _chosen(buckets: list[int], max_points: int) -> list[int]:
    """At most ``max_points`` buckets spread evenly, always with the first and the last."""
    if len(buckets) <= max_points:
        return buckets
    if max_points == 1:
        return buckets[-1:]
    step = (len(buckets) - 1) / (max_points - 1)
    return [buckets[round(i * step)] for i in range(max_points)]


def build_timeline(
    aggregates: ExperimentAggregates,
    latencies: dict[str, list[tuple[float, float]]],
    max_points: int = MAX_TIMELINE_POINTS,
    min_detectable_effect: float | None = None,
) -> ExperimentTimeline:
    """The report at the end of each of (at most ``max_points``) time buckets.

    ``latencies``: variant -> (created_at, latency_ms) of its recent answers; each point
    takes the p95 of those since the previous point.
    """
    buckets = _chosen(sorted({c.bucket for c in aggregates.cells}), max(1, max_points))
    points: list[TimelinePoint] = []
    ends = [(b + 1) * aggregates.bucket_s for b in buckets]
    alpha = ALPHA
    ordered = {name: sorted(samples) for name, samples in latencies.items()}
    times = {name: [at for at, _ in samples] for name, samples in ordered.items()}
    for i, bucket in enumerate(buckets):
        cut = aggregates.model_copy(
            update={
                "cells": [c for c in aggregates.cells if c.bucket <= bucket],
                "paired": [p for p in aggregates.paired if p.bucket <= bucket],
            }
        )
        report = build_report(cut, {}, min_detectable_effect=min_detectable_effect)
        alpha = report.alpha
        start = ends[i - 1] if i else float("-inf")
        variants = []
        for v in report.variants:
            at = times.get(v.name, [])
            lo, hi = bisect.bisect_right(at, start), bisect.bisect_right(at, ends[i])
            latency = Latency.of([ms for _, ms in ordered.get(v.name, [])[lo:hi]])
            variants.append(
                VariantPoint(
                    name=v.name,
                    shadow=v.shadow,
                    requests=v.assigned,
                    observed_share=v.observed_share,
                    accuracy=v.accuracy,
                    mae=v.mae,
                    p95_latency_ms=latency.p95 if latency else None,
                )
            )
        comparisons = [
            ComparisonPoint(
                challenger=c.challenger,
                metric=str(c.metric),
                always_valid_p_value=c.always_valid_p_value,
                verdict=str(c.verdict),
            )
            for c in report.comparisons
        ]
        points.append(TimelinePoint(at=ends[i], variants=variants, comparisons=comparisons))
    return ExperimentTimeline(
        experiment=aggregates.experiment,
        bucket_s=aggregates.bucket_s,
        alpha=alpha,
        points=points,
    )


def experiment_list(spans: list[ExperimentSpan], current: str | None) -> ExperimentList:
    """Every experiment with a prediction in the store, the latest active first.

    Archived ones (``raysplit experiments archive``) are left out, so the page's selector
    lists what is still of interest; their reports stay readable by name. The served
    experiment is listed even when archived: the page shows it by default."""
    entries = [
        ExperimentEntry(
            experiment=s.experiment,
            first_at=s.first_at,
            last_at=s.last_at,
            requests=s.requests,
            current=s.experiment == current,
        )
        for s in spans
        if not s.archived or s.experiment == current
    ]
    entries.sort(key=lambda e: (e.current, e.last_at), reverse=True)
    return ExperimentList(current=current, experiments=entries)
