"""What the rollout's decision rule reads, cut from the experiment's data: pure.

A rollout is judged on its own epochs only (those first served after it started: every
rollout step is an allocation of its own, see
:attr:`serve_app.rollout.state.RolloutRecord.allocation_tag`), so traffic from before the
rollout, or from an earlier rollout of the same experiment, neither helps nor hurts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raysplit.core.reference_stats import ReferenceStats
from raysplit.eventstore.aggregates import ExperimentAggregates
from serve_app.stats.drift import feature_drift


def rollout_aggregates(aggregates: ExperimentAggregates, since: float) -> ExperimentAggregates:
    """``aggregates`` restricted to the epochs that started at or after ``since``."""
    epochs = [e for e in aggregates.epochs if e.started_at >= since]
    keep = {e.epoch for e in epochs}
    return aggregates.model_copy(
        update={
            "epochs": epochs,
            "cells": [c for c in aggregates.cells if c.epoch in keep],
            "units": [u for u in aggregates.units if u.epoch in keep],
            "paired": [p for p in aggregates.paired if p.epoch in keep],
        }
    )


def candidate_psi(
    reference: ReferenceStats | None, features: list[str], recent: Sequence[Sequence[float]]
) -> float | None:
    """The largest PSI over features of the candidate's recent inputs against its training
    data; None without a reference or with too few rows to tell."""
    if reference is None or not recent:
        return None
    drift = feature_drift(reference, features, np.asarray(recent, dtype=float))
    if not drift:
        return None
    return max(d.psi for d in drift.values())
