"""``GET /metrics/summary``: the few numbers a person checks first (pure, no I/O).

Computed from the event store, so it covers every replica, over a recent window. Requests
refused before reaching a model (4xx) are not events and are not counted here; they are in
Prometheus as ``ray_raysplit_rejected_requests_total``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from serve_app.report.experiment import Latency


class TrafficSummary(BaseModel):
    requests: int
    errors: int
    error_rate: float | None
    requests_per_s: float
    latency_ms: Latency | None  # the model's time, over requests it answered


class MetricsSummary(TrafficSummary):
    experiment: str
    window_s: float
    variants: dict[str, TrafficSummary]
    shadow_variants: dict[str, TrafficSummary]
    events: dict[str, Any]


def _traffic(rows: list[dict[str, Any]], window_s: float) -> TrafficSummary:
    errors = sum(1 for r in rows if r["outcome"] != "ok")
    return TrafficSummary(
        requests=len(rows),
        errors=errors,
        error_rate=errors / len(rows) if rows else None,
        requests_per_s=len(rows) / window_s,
        latency_ms=Latency.of([r["latency_ms"] for r in rows if r["outcome"] == "ok"]),
    )


def summarize(
    experiment: str, window_s: float, rows: list[dict[str, Any]], events: dict[str, Any]
) -> MetricsSummary:
    """``rows``: the window's predictions (variant, shadow, outcome, latency_ms)."""
    live = [r for r in rows if not r["shadow"]]
    by_variant: dict[tuple[bool, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault((row["shadow"], row["variant"]), []).append(row)
    return MetricsSummary(
        experiment=experiment,
        window_s=window_s,
        **_traffic(live, window_s).model_dump(),
        variants={v: _traffic(r, window_s) for (s, v), r in sorted(by_variant.items()) if not s},
        shadow_variants={v: _traffic(r, window_s) for (s, v), r in sorted(by_variant.items()) if s},
        events=events,
    )
