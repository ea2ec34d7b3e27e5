"""The covariate feedback carries for variance reduction (CUPED), from the replica's models."""

from __future__ import annotations

import numpy as np

from serve_app.events.feedback import Answered
from serve_app.predict.state import ServingState


def control_confidence(state: ServingState, answered: Answered) -> dict[str, float]:
    """The covariate of each single-row request this replica's experiment answered: the
    control model's probability for the class it would itself have given, computed here,
    the same way whichever arm answered (so it cannot depend on the arm: what CUPED needs),
    and known before the label (a function of the request's input). Classifiers only."""
    control = state.models.get(state.config.control_variant)
    if control is None or control.classes is None:
        return {}
    mine = [
        (rid, rows[0])
        for rid, (experiment, _, _, rows) in answered.items()
        if experiment == state.config.experiment and len(rows) == 1
    ]
    if not mine:
        return {}
    _, probabilities = control.predict(np.asarray([row for _, row in mine], dtype=float))
    if probabilities is None:
        return {}
    return {rid: float(max(p)) for (rid, _), p in zip(mine, probabilities, strict=True)}
