"""A replica's own events, appended to the lake as Parquet as they are written.

Export and prune (:mod:`raysplit.eventstore.lake.archive`) fill the lake from the database
in bulk; with ``lake_append_s`` each replica also appends what its writer stored, so the
lake holds today's events too, that many seconds later, without a job reading them back
out of the database. Files are written whole, one per kind, experiment and day per flush, so
a flush is a few files however busy the replica; rows a flush cannot write (the lake is
unreachable) stay for the next one, up to ``max_pending`` rows, then the oldest are
dropped and counted. Readers keep one row per request id (a row appended here and
exported again later is read once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from raysplit.core.events import Event, FeedbackEvent, PredictionEvent
from raysplit.eventstore.lake.files import write_feedback, write_predictions


@dataclass(frozen=True)
class AppendStats:
    pending: int  # rows waiting for the next flush
    appended: int  # rows written to the lake
    files: int
    dropped: int  # rows given up while the lake could not be written


class LakeAppender:
    """Rows of written events, buffered and flushed to the lake in files."""

    def __init__(
        self,
        lake_uri: str,
        max_rows: int = 20_000,
        max_pending: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.lake_uri = lake_uri
        self.max_rows = max_rows
        self.max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()  # add() on the event loop, flush() in a thread
        self._predictions: list[dict] = []
        self._feedback: list[dict] = []
        self._since = clock()
        self.appended = self.files = self.dropped = 0

    def add(self, events: Iterable[Event]) -> None:
        """Queue the rows of stored predictions and feedback (allocations stay in the
        database: the report's rollups need them, the lake's readers do not)."""
        predictions = [e.row() for e in events if isinstance(e, PredictionEvent)]
        feedback = [e.row() for e in events if isinstance(e, FeedbackEvent)]
        with self._lock:
            self._predictions += predictions
            self._feedback += feedback
            excess = len(self._predictions) + len(self._feedback) - self.max_pending
            if excess > 0:  # the lake has been down for long: the oldest go first
                cut = min(excess, len(self._predictions))
                del self._predictions[:cut]
                del self._feedback[: excess - cut]
                self.dropped += excess

    @property
    def pending(self) -> int:
        return len(self._predictions) + len(self._feedback)

    def due(self, max_age_s: float) -> bool:
        """Enough rows for a file, or rows that have waited ``max_age_s``."""
        return self.pending >= self.max_rows or (
            self.pending > 0 and self._clock() - self._since >= max_age_s
        )

    def flush(self) -> int:
        """Write every pending row; returns the rows written. On a lake error the rows
        are kept for the next flush and the error (a one-line RaysplitError) is raised."""
        with self._lock:
            predictions, self._predictions = self._predictions, []
            feedback, self._feedback = self._feedback, []
            self._since = self._clock()
        files = written = 0
        try:
            if predictions:
                files += len(write_predictions(self.lake_uri, predictions))
                written, predictions = len(predictions), []
            if feedback:
                files += len(write_feedback(self.lake_uri, feedback))
                written, feedback = written + len(feedback), []
        finally:
            with self._lock:  # what was not written goes back in front, in order
                self._predictions[:0] = predictions
                self._feedback[:0] = feedback
                self.appended += written
                self.files += files
        return written

    def stats(self) -> AppendStats:
        return AppendStats(self.pending, self.appended, self.files, self.dropped)
