"""The experiment report behind GET /experiment and `raysplit report` (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from raysplit.core.reference_stats import ReferenceStats
from serve_app.drift import FeatureDrift, feature_drift
from serve_app.statistics import (
    Comparison,
    Interval,
    accuracy_interval,
    compare,
    mean_interval,
    sample_ratio_p_value,
)

DRIFT_WINDOW = 1000


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
    name: str
    shadow: bool
    model_versions: list[str]
    assigned: int
    served: int
    errors: int
    observed_share: float | None
    expected_share: float | None
    latency_ms: Latency | None
    feedback: int
    accuracy: Interval | None = None
    mae: Interval | None = None
    rmse: float | None = None
    agreement_with_live: Interval | None = None
    drift: dict[str, FeatureDrift] | None = None


class ExperimentReport(BaseModel):
    experiment: str
    control: str | None
    task: str
    requests: int
    errors: int
    srm_p_value: float | None
    variants: list[VariantReport]
    comparisons: list[Comparison]
    events: dict[str, Any] | None = None


def _outcome(row: dict[str, Any], classification: bool) -> float | None:
    """1/0 correctness or absolute error for a single-row prediction with feedback."""
    predictions = row["predictions"]
    if len(predictions) != 1:
        return None  # one label per request: batch predictions cannot be scored
    if classification and row["label"] is not None:
        return float(str(predictions[0]) == str(row["label"]))
    if not classification and row["value"] is not None:
        return abs(float(predictions[0]) - float(row["value"]))
    return None


def build_report(
    experiment: str,
    rows: list[dict[str, Any]],
    classification: bool,
    shares: dict[str, float] | None = None,
    control: str | None = None,
    references: dict[str, tuple[ReferenceStats, list[str]]] | None = None,
    min_detectable_effect: float | None = None,
    recent_inputs: dict[str, list[list[float]]] | None = None,
) -> ExperimentReport:
    """``rows`` in arrival order: predictions joined with their feedback.

    A row whose ``outcome`` is "error" was assigned to its variant but the model failed:
    it counts for the sample-ratio check (assignment is what the weights promise) and as
    an error, never for quality or latency. Drift compares ``recent_inputs`` (a variant's
    latest input rows, at most ``DRIFT_WINDOW`` predictions) with ``references``.
    """
    live = [r for r in rows if not r["shadow"]]
    names = list(shares or {}) + sorted({r["variant"] for r in rows} - set(shares or {}))
    live_answer = {r["request_id"]: r["predictions"] for r in live}
    outcomes: dict[str, list[float]] = {}
    reports = []
    for name in names:
        assigned = [r for r in rows if r["variant"] == name]
        mine = [r for r in assigned if r.get("outcome", "ok") == "ok"]
        shadow = bool(assigned) and all(r["shadow"] for r in assigned)
        scored = [o for o in (_outcome(r, classification) for r in mine) if o is not None]
        outcomes[name] = scored
        report = VariantReport(
            name=name,
            shadow=shadow,
            model_versions=sorted({str(r["model_version"]) for r in assigned}),
            assigned=len(assigned),
            served=len(mine),
            errors=len(assigned) - len(mine),
            observed_share=None if shadow or not live else len(assigned) / len(live),
            expected_share=(shares or {}).get(name),
            latency_ms=Latency.of([r["latency_ms"] for r in mine]),
            feedback=sum(1 for r in mine if r["label"] is not None or r["value"] is not None),
        )
        if classification:
            report.accuracy = accuracy_interval(int(sum(scored)), len(scored))
        elif scored:
            report.mae = mean_interval(scored)
            report.rmse = float(np.sqrt(np.mean(np.square(scored))))
        if shadow:
            agree = [
                r["predictions"] == live_answer[r["request_id"]]
                for r in mine
                if r["request_id"] in live_answer
            ]
            report.agreement_with_live = accuracy_interval(sum(agree), len(agree))
        elif references and name in references and recent_inputs and name in recent_inputs:
            reference, features = references[name]
            recent = np.array(recent_inputs[name], dtype=float).reshape(-1, len(features))
            report.drift = feature_drift(reference, features, recent)
        reports.append(report)

    srm = sample_ratio_p_value({r.name: r.assigned for r in reports if not r.shadow}, shares or {})
    control = control or next((r.name for r in reports if not r.shadow), None)
    comparisons = [
        compare(
            control,
            r.name,
            outcomes[control],
            outcomes[r.name],
            "accuracy" if classification else "mae",
            classification,
            srm,
            min_detectable_effect=min_detectable_effect,
        )
        for r in reports
        if control is not None and not r.shadow and r.name != control
    ]
    return ExperimentReport(
        experiment=experiment,
        control=control,
        task="classification" if classification else "regression",
        requests=len(live),
        errors=sum(r.errors for r in reports if not r.shadow),
        srm_p_value=srm,
        variants=reports,
        comparisons=comparisons,
    )
