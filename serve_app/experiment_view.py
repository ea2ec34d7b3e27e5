"""The experiment report of what a replica serves, read from the event store.

The statistics are pure (:func:`serve_app.report.build_report`); this module only gathers
their inputs: the aggregates and per-variant facts (:mod:`serve_app.experiment_queries`),
the recent inputs for drift, and, for the experiment being served now, the configured
shares, the control and the training references.
"""

from __future__ import annotations

from serve_app.event_store import EventStore
from serve_app.experiment_queries import ExperimentQueries
from serve_app.report import DRIFT_WINDOW, ExperimentReport, build_report
from serve_app.state import ServingState


def experiment_report(store: EventStore, state: ServingState, name: str) -> ExperimentReport:
    """Blocking (database reads): run it in a worker thread."""
    current = name == state.config.experiment
    classification = state.models[state.config.control_variant].classes is not None
    queries = ExperimentQueries(store.engine, name, classification)
    references = (
        {n: (m.reference, state.features) for n, m in state.models.items() if m.reference}
        if current
        else {}
    )
    recent = {v: store.recent_inputs(name, v, DRIFT_WINDOW) for v in references}
    return build_report(
        queries.aggregates(state.config.control_variant if current else None),
        queries.variant_facts(),
        state.router.expected_shares() if current else None,
        references,
        recent,
        state.config.min_detectable_effect,
    )
