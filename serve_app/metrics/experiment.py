"""raysplit's per-variant Prometheus series, exported through Ray's metrics agent.

They sit next to Ray's own ``ray_serve_*`` series on every node's metrics export port and
are named ``ray_raysplit_*`` there (Ray prefixes custom metrics). Ray adds the
``application``, ``deployment`` and ``replica`` tags itself.

The request path only bumps plain dictionaries (:class:`serve_app.predict.tally.MetricTally`,
free of Ray); a background task hands the totals to Ray every ``interval_s``, so a
Prometheus scrape costs the predictions nothing. Label values are bounded: experiment,
variant and model version come from the deployed config, class labels from the model
(capped), features from the signature. Request and user ids never become label values.
"""

from __future__ import annotations

import asyncio
import logging

from ray.serve.metrics import Counter, Gauge, Histogram

from serve_app.events.buffer import EventStats
from serve_app.predict.state import ServingState
from serve_app.predict.tally import MetricTally
from serve_app.report.experiment import ExperimentReport
from serve_app.rollout.state import DecisionEntry, RolloutPhase, RolloutRecord

logger = logging.getLogger("ray.serve")

LATENCY_BOUNDARIES_MS = [0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500]
ERROR_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100]

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
    "feedback_refused": (
        "raysplit_feedback_refused",
        "Feedback items refused (422): a label the prediction's model cannot have given.",
        ("experiment",),
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
        "Events leaving the replica's buffer, by fate (written, dropped, or refused by"
        " the database and set aside).",
        ("fate",),
    ),
    "rollout_decisions": (
        "raysplit_rollout_decisions",
        "Decisions of the rollout controller (hold, advance, rollback, promote) and"
        " operators' commands (pause, resume, abort, promote), by kind.",
        ("experiment", "candidate", "kind", "actor"),
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
        "Sample-ratio-mismatch p-value: each allocation epoch against its own weights,"
        " randomised traffic only (sticky counted in users), combined.",
        ("experiment",),
    ),
    "always_valid": (
        "raysplit_always_valid_p_value",
        "Always-valid p-value of each challenger against the control.",
        VARIANT,
    ),
    "label_coverage": (
        "raysplit_label_coverage",
        "Share of a variant's answered randomised requests that got feedback.",
        VARIANT,
    ),
    "guardrail": (
        "raysplit_guardrail_p_value",
        "Always-valid p-value (Holm-adjusted) of a challenger's guardrail against the"
        " control: metric error_rate or log_latency.",
        (*VARIANT, "metric"),
    ),
    "shadow_paired": (
        "raysplit_shadow_paired_p_value",
        "Always-valid p-value (Holm-adjusted) of a shadow against the live answers to the"
        " same labelled requests.",
        VARIANT,
    ),
    "psi": (
        "raysplit_drift_psi",
        "Population stability index of recent inputs against training.",
        (*VARIANT, "feature"),
    ),
    "rollout_step": (
        "raysplit_rollout_step",
        "Current step of the experiment's rollout (1-based; 0 before it starts).",
        ("experiment", "candidate"),
    ),
    "rollout_share": (
        "raysplit_rollout_share",
        "Candidate's effective share of live traffic in the rollout, percent.",
        ("experiment", "candidate"),
    ),
    "runtime": (
        "raysplit_model_runtime",
        "1 for the runtime that answers a variant's model version (onnx: its verified ONNX"
        " conversion; sklearn), 0 for a version or runtime no longer served.",
        (*VARIANT, "model_version", "runtime"),
    ),
    "config_refused": (
        "raysplit_config_refused",
        "1 while this replica serves an earlier config because it refused the deployed"
        " one (GET /models says why), 0 once a deploy is applied.",
        (),
    ),
    "rollout_phase": (
        "raysplit_rollout_phase",
        "1 for the rollout's current phase (running, paused, promoted, rolled_back,"
        " aborted), 0 for the others.",
        ("experiment", "candidate", "phase"),
    ),
}


def _actor(entry: DecisionEntry) -> str:
    """controller or operator: the replica id itself would be a label per replica."""
    return "operator" if entry.actor.startswith("operator") else "controller"


def _p_or_one(p: float | None) -> float:
    """1 (no evidence yet) until both arms have enough to look."""
    return 1.0 if p is None else p


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
        self.tally = MetricTally()
        self._reported_events = {"written": 0, "dropped": 0, "refused": 0}
        self._runtime_series: set[tuple[str, ...]] = set()  # tag values set to 1
        self._task: asyncio.Task | None = None

    # -- periodic -----------------------------------------------------------------------
    def events(self, stats: EventStats) -> None:
        """Turn the buffer's running totals into counter increments and a gauge."""
        self._gauges["queue"].set(stats.queued)
        for fate, seen in self._reported_events.items():
            total = getattr(stats, fate)
            if total > seen:
                self._counters["events"].inc(total - seen, tags={"fate": fate})
                self._reported_events[fate] = total

    def rollout(self, record: RolloutRecord) -> None:
        """The rollout's step, share and phase as every replica serves them."""
        tags = {"experiment": record.experiment, "candidate": record.config.candidate}
        self._gauges["rollout_step"].set(record.step + 1, tags=tags)
        self._gauges["rollout_share"].set(record.share, tags=tags)
        for phase in RolloutPhase:
            self._gauges["rollout_phase"].set(
                1.0 if phase is record.phase else 0.0, tags={**tags, "phase": phase.value}
            )

    def rollout_decision(self, entry: DecisionEntry, candidate: str) -> None:
        """Counted once, by the replica whose decision (or command) took effect."""
        tags = {"experiment": entry.experiment, "candidate": candidate, "kind": entry.kind}
        self._counters["rollout_decisions"].inc(1, tags={**tags, "actor": _actor(entry)})

    def config_refused(self, refused: bool) -> None:
        self._gauges["config_refused"].set(1.0 if refused else 0.0)

    def runtimes(self, state: ServingState) -> None:
        """Which runtime answers each variant of ``state``: 1 on its series, 0 on series of
        versions it replaced. Called whenever the replica's state is replaced."""
        experiment = state.config.experiment
        current = {
            (experiment, name, str(model.resolved.version), model.runtime)
            for name, model in state.models.items()
        }
        tag_keys = GAUGES["runtime"][2]
        for values in self._runtime_series - current:
            self._gauges["runtime"].set(0.0, tags=dict(zip(tag_keys, values, strict=True)))
        for values in current:
            self._gauges["runtime"].set(1.0, tags=dict(zip(tag_keys, values, strict=True)))
        self._runtime_series = current

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
        for variant in report.variants:
            if variant.label_coverage is not None:
                self._gauges["label_coverage"].set(
                    variant.label_coverage, tags={"experiment": experiment, "variant": variant.name}
                )
        for guardrail in report.guardrails:
            self._gauges["guardrail"].set(
                _p_or_one(guardrail.adjusted_always_valid_p_value),
                tags={
                    "experiment": experiment,
                    "variant": guardrail.challenger,
                    "metric": guardrail.metric.value,
                },
            )
        for shadow in report.shadows:
            self._gauges["shadow_paired"].set(
                _p_or_one(shadow.adjusted_always_valid_p_value),
                tags={"experiment": experiment, "variant": shadow.shadow},
            )
        for comparison in report.comparisons:
            # 1 (no evidence yet) until both arms have enough scored requests to look
            self._gauges["always_valid"].set(
                1.0 if comparison.always_valid_p_value is None else comparison.always_valid_p_value,
                tags={"experiment": experiment, "variant": comparison.challenger},
            )

    def flush(self) -> None:
        """Hand what accumulated since the last flush to Ray's metrics agent."""
        taken = self.tally.take()
        for key, counts in taken.counts.items():
            counter, tag_keys = self._counters[key], COUNTERS[key][2]
            for values, count in counts.items():
                counter.inc(count, tags=dict(zip(tag_keys, values, strict=True)))
        for histogram, observed in (
            (self._latency, taken.latencies),
            (self._abs_error, taken.abs_errors),
        ):
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
