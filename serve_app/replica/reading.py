"""The experiment report and timeline of what a replica serves, read from the event store.

The statistics are pure (:func:`serve_app.report.experiment.build_report`,
:func:`serve_app.report.timeline.build_timeline`); this module only gathers their inputs:
the aggregates and per-variant facts (:mod:`raysplit.eventstore.queries`), the recent
inputs for drift, and, for the experiment being served now, the configured shares, the
control and the training references. Blocking (database reads): run it in a worker thread.
"""

from __future__ import annotations

from raysplit.eventstore.queries import ExperimentQueries
from raysplit.eventstore.store import EventStore
from serve_app.config.constants import DRIFT_WINDOW
from serve_app.predict.state import ServingState
from serve_app.report.experiment import ExperimentReport, build_report
from serve_app.report.timeline import (
    ExperimentList,
    ExperimentTimeline,
    build_timeline,
    experiment_list,
)


def _queries(store: EventStore, state: ServingState, name: str) -> ExperimentQueries:
    classification = state.models[state.config.control_variant].classes is not None
    return store.queries(name, classification)


def _control(state: ServingState, name: str) -> str | None:
    """The served experiment's control; an earlier experiment's report has none."""
    return state.config.control_variant if name == state.config.experiment else None


def experiment_report(store: EventStore, state: ServingState, name: str) -> ExperimentReport:
    current = name == state.config.experiment
    queries = _queries(store, state, name)
    references = (
        {n: (m.reference, state.features) for n, m in state.models.items() if m.reference}
        if current
        else {}
    )
    recent = {v: store.recent_inputs(name, v, DRIFT_WINDOW) for v in references}
    return build_report(
        queries.aggregates(_control(state, name)),
        queries.variant_facts(),
        state.router.expected_shares() if current else None,
        references,
        recent,
        state.config.min_detectable_effect,
    )


def read_timeline(
    store: EventStore, state: ServingState, name: str, max_points: int
) -> ExperimentTimeline:
    """The timeline of experiment ``name`` (the served one's control, as the report's)."""
    queries = _queries(store, state, name)
    return build_timeline(
        queries.aggregates(_control(state, name)),
        queries.recent_latencies(),
        max_points,
        state.config.min_detectable_effect,
    )


def list_experiments(store: EventStore, current: str | None) -> ExperimentList:
    """Every experiment with a prediction in the store, the latest active first."""
    return experiment_list(store.experiment_spans(), current)
