"""What the request path counts for Prometheus, in plain dictionaries and free of Ray.

The predictor and the event writer bump these;
:class:`serve_app.metrics.experiment.ExperimentMetrics` takes the totals every second and
hands them to Ray's metrics agent, so a request never waits on a metrics call, and the
counting is testable without a cluster.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from raysplit.core.events import Judgement
from serve_app.config.constants import MAX_CLASS_LABELS

Key = tuple[str, ...]


@dataclass
class Taken:
    """Everything counted since the last :meth:`MetricTally.take`."""

    counts: dict[str, Tally[Key]] = field(default_factory=lambda: defaultdict(Tally))
    latencies: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))
    abs_errors: dict[Key, list[float]] = field(default_factory=lambda: defaultdict(list))


class MetricTally:
    """Counts per (experiment, variant, ...) tag values, keyed by the metric's short name
    (see :data:`serve_app.metrics.experiment.COUNTERS`)."""

    def __init__(self) -> None:
        self._taken = Taken()

    def take(self) -> Taken:
        taken, self._taken = self._taken, Taken()
        return taken

    @property
    def counts(self) -> dict[str, Tally[Key]]:
        return self._taken.counts

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
        self._taken.counts["requests"][(experiment, variant, str(version), outcome)] += 1
        if predictions is None:
            return
        self._taken.latencies[(experiment, variant)].append(latency_ms)
        rows = self._taken.counts["rows"]
        if classes is None:
            rows[(experiment, variant, "value")] += len(predictions)
        elif len(classes) > MAX_CLASS_LABELS:
            rows[(experiment, variant, "other")] += len(predictions)
        else:
            rows.update((experiment, variant, str(label)) for label in predictions)

    def rejected(self, experiment: str, status: int) -> None:
        self._taken.counts["rejected"][(experiment, str(status))] += 1

    def feedback_refused(self, experiment: str, count: int) -> None:
        """Feedback items whose label the prediction's model cannot have given."""
        if count:
            self._taken.counts["feedback_refused"][(experiment,)] += count

    def shadow(self, experiment: str, variant: str, agrees: bool) -> None:
        self._taken.counts["shadow"][(experiment, variant, str(agrees).lower())] += 1

    def feedback(self, judgement: Judgement) -> None:
        """Feedback the store has just taken as new (repeats are never counted)."""
        key = (judgement.experiment, judgement.variant)
        flag = "n/a" if judgement.correct is None else str(judgement.correct).lower()
        self._taken.counts["feedback"][(*key, flag)] += 1
        if judgement.abs_error is not None:
            self._taken.abs_errors[key].append(judgement.abs_error)
