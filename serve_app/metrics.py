"""raysplit's per-variant Prometheus series, exported through Ray's metrics agent.

They sit next to Ray's own ``ray_serve_*`` series on every node's metrics export port and
are named ``ray_raysplit_*`` there (Ray prefixes custom metrics). Ray adds the
``application``, ``deployment`` and ``replica`` tags itself.

The request path only bumps plain dictionaries; a background task hands the totals to
Ray every ``interval_s`` so a Prometheus scrape costs the predictions nothing. Label values
are bounded: experiment, variant and model version come from the deployed config, class
labels from the model (capped), features from the signature. Request and user ids never
become label values.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from collections import defaultdict
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.report import ExperimentReport

logger = logging.getLogger("ray.serve")

LATENCY_BOUNDARIES_MS = [0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]
ERROR_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100]
MAX_CLASS_LABELS = 50  # beyond this, predicted classes are counted as "other"

Key = tuple[str, ...]


VARIANT = ("experiment", "variant")

# name on the export (Ray adds "ray_" and, for counters, "_total"), help text, tag keys
COUNTERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "requests": (
        "raysplit_requests",
        "Requests assigned to a variant, by outcome (ok or error).",
        (*VARIANT, "model_version", "outcome"),
    ),
    "rows": (
        "raysplit_predicted_rows",
        "Rows predicted, by predicted class (classifiers) or 'value'.",
        (*VARIANT, "predicted"),
    ),
    "rejected": (
        "raysplit_rejected_requests",
        "Requests refused before reaching a model, by HTTP status.",
        ("experiment", "status"),
    ),
    "shadow": (
        "raysplit_shadow_predictions",
        "Shadow predictions, by agreement with the variant that answered.",
        (*VARIANT, "agrees"),
    ),
    "feedback": (
        "raysplit_feedback",
        "Feedback received per variant; correct is true/false for classifiers and 'n/a'"
        " for regressors.",
        (*VARIANT, "correct"),
    ),
    "events": (
        "raysplit_events",
        "Events leaving the replica's buffer, by fate (written or dropped).",
        ("fate",),
    ),
}
GAUGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "queue": (
        "raysplit_event_queue_depth",
        "Events waiting in this replica's buffer for the event store.",
        (),
    ),
    "quality": (
        "raysplit_online_quality",
        "Online accuracy (classifiers) or MAE (regressors) from feedback, with its 95%"
        " interval bounds.",
        (*VARIANT, "metric", "bound"),
    ),
    "srm": (
        "raysplit_srm_p_value",
        "Sample-ratio-mismatch p-value of assignments against the weights.",
        ("experiment",),
    ),
    "always_valid": (
        "raysplit_always_valid_p_value",
        "Always-valid p-value of each challenger against the control.",
        VARIANT,
    ),
    "psi": (
        "raysplit_drift_psi",
        "Population stability index of recent inputs against training.",
        (*VARIANT, "feature"),
    ),
}


class ExperimentMetrics:
    """Counters per (experiment, variant, ...) accumulated locally, flushed to Ray."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._counters = {
            key: Counter(name, description=text, tag_keys=tags)
            for key, (name, text, tags) in COUNTERS.items()
        }
        self._gauges = {
            key: Gauge(name, description=text, tag_keys=tags)
            for key, (name, text, tags) in GAUGES.items()
        }
        self._latency = Histogram(
            "raysplit_model_latency_ms",
            description="Time the variant's model took to predict, in milliseconds.",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=VARIANT,
        )
        self._abs_error = Histogram(
            "raysplit_feedback_abs_error",
            description="Absolute error of regressors' predictions that got feedback.",
            boundaries=ERROR_BOUNDARIES,
            tag_keys=VARIANT,
        )
        self._pending: dict[str, Tally[Key]] = defaultdict(Tally)
        self._latencies: dict[Key, list[float]] = defaultdict(list)
        self._abs_errors: dict[Key, list[float]] = defaultdict(list)
        self._reported_events = {"written": 0, "dropped": 0}
        self._task: asyncio.Task | None = None

    # -- request path: dictionary updates only --------------------------------------
    def prediction(
        self,
        experiment: str,
        variant: str,
        version: str | None,
        latency_ms: float,
        predictions: list[Any] | None,
        classes: list[Any] | None,
    ) -> None:
        """One request a variant answered (``predictions``) or failed on (None)."""
        outcome = "error" if predictions is None else "ok"
        self._pending["requests"][(experiment, variant, str(version), outcome)] += 1
        if predictions is None:
            return
        self._latencies[(experiment, variant)].append(latency_ms)
        rows = self._pending["rows"]
        if classes is None:
            rows[(experiment, variant, "value")] += len(predictions)
        elif len(classes) > MAX_CLASS_LABELS:
            rows[(experiment, variant, "other")] += len(predictions)
        else:
            rows.update((experiment, variant, str(label)) for label in predictions)

    def rejected(self, experiment: str, status: int) -> None:
        self._pending["rejected"][(experiment, str(status))] += 1

    def shadow(self, experiment: str, variant: str, agrees: bool) -> None:
        self._pending["shadow"][(experiment, variant, str(agrees).lower())] += 1

    def feedback(
        self, experiment: str, variant: str, correct: bool | None, abs_error: float | None
    ) -> None:
        flag = "n/a" if correct is None else str(correct).lower()
        self._pending["feedback"][(experiment, variant, flag)] += 1
        if abs_error is not None:
            self._abs_errors[(experiment, variant)].append(abs_error)

    # -- periodic -----------------------------------------------------------------------
    def events(self, stats: dict[str, Any]) -> None:
        """Turn the buffer's running totals into counter increments and a gauge."""
        self._gauges["queue"].set(stats["queued"])
        for fate, seen in self._reported_events.items():
            if stats[fate] > seen:
                self._counters["events"].inc(stats[fate] - seen, tags={"fate": fate})
                self._reported_events[fate] = stats[fate]

    def report(self, report: ExperimentReport) -> None:
        """Gauges from the experiment report: quality, SRM, sequential p-values, drift."""
        experiment = report.experiment
        if report.srm_p_value is not None:
            self._gauges["srm"].set(report.srm_p_value, tags={"experiment": experiment})
        for variant in report.variants:
            quality = ("accuracy", variant.accuracy) if variant.accuracy else ("mae", variant.mae)
            if quality[1] is not None:
                for bound in ("estimate", "low", "high"):
                    self._gauges["quality"].set(
                        getattr(quality[1], bound),
                        tags={
                            "experiment": experiment,
                            "variant": variant.name,
                            "metric": quality[0],
                            "bound": bound,
                        },
                    )
            for feature, drift in (variant.drift or {}).items():
                self._gauges["psi"].set(
                    drift.psi,
                    tags={"experiment": experiment, "variant": variant.name, "feature": feature},
                )
        for comparison in report.comparisons:
            # 1 (no evidence yet) until both arms have enough scored requests to look
            self._gauges["always_valid"].set(
                1.0 if comparison.always_valid_p_value is None else comparison.always_valid_p_value,
                tags={"experiment": experiment, "variant": comparison.challenger},
            )

    def flush(self) -> None:
        """Hand what accumulated since the last flush to Ray's metrics agent."""
        pending, self._pending = self._pending, defaultdict(Tally)
        latencies, self._latencies = self._latencies, defaultdict(list)
        abs_errors, self._abs_errors = self._abs_errors, defaultdict(list)
        for key, counts in pending.items():
            counter, tag_keys = self._counters[key], COUNTERS[key][2]
            for values, count in counts.items():
                counter.inc(count, tags=dict(zip(tag_keys, values, strict=True)))
        for histogram, observed in ((self._latency, latencies), (self._abs_error, abs_errors)):
            for (experiment, variant), values in observed.items():
                tags = {"experiment": experiment, "variant": variant}
                for value in values:
                    histogram.observe(value, tags=tags)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.flush()
            except Exception:  # metrics must never take the replica down
                logger.exception("flushing raysplit metrics failed")
