"""The replica's two jobs toward the Parquet lake: appending its own events
(:class:`LakeFlusher`, with ``lake_append_s``) and keeping the event store's retention
(:class:`RetentionJob`).

Retention, kept by the cluster itself.

With ``RAYSPLIT_RETENTION`` (e.g. ``30d``) in the replicas' environment, one replica at a
time (the holder of the ``retention`` lease in the event store) archives the raw events
older than that to the lake (``RAYSPLIT_LAKE_URI``) and removes them from the database,
every ``RETENTION_INTERVAL_S``: on PostgreSQL whole day partitions are dropped
(:mod:`raysplit.eventstore.partitions`). The rollups stay, so reports and rollouts are
unchanged. Without the setting nothing is ever removed, and ``raysplit prune`` from a cron
job does the same work.

Why in the replicas: a laptop has no cron and a cluster already runs them; the lease makes
it one job however many replicas there are, and a killed holder's job passes to another
replica when the lease lapses. A lake on one node's disk is per node: on a cluster set
``RAYSPLIT_LAKE_URI`` to shared storage (docs/event_lake.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.labelled import duration_s
from raysplit.eventstore.lake.appender import LakeAppender
from raysplit.eventstore.lake.archive import PruneCounts, prune
from raysplit.eventstore.store import EventStore
from serve_app.predict.state import ServingState
from serve_app.replica.loops import Loop

logger = logging.getLogger("ray.serve")

RETENTION_INTERVAL_S = 3600.0
RETENTION_LEASE = "retention"


def retention_age_s(text: str | None) -> float | None:
    """``RAYSPLIT_RETENTION`` in seconds, None when unset; raises ValueError naming the
    value when it is not a positive duration such as ``30d``."""
    if text is None or not text.strip():
        return None
    age = duration_s(text)
    if age is None or age <= 0:
        raise ValueError(f"RAYSPLIT_RETENTION={text!r} is not a positive duration (e.g. 30d, 36h)")
    return age


class RetentionJob(Loop):
    """Archive, then remove, raw events older than the retention, from the lease holder."""

    name = "retention"

    def __init__(
        self,
        store: Callable[[], Awaitable[EventStore]],
        holder: str,
        retention: str | None,
        lake_uri: str,
        interval_s: float = RETENTION_INTERVAL_S,
    ):
        super().__init__()
        self._store = store
        self._holder = holder
        self._lake_uri = lake_uri
        self._interval_s = interval_s
        self.last: PruneCounts | None = None
        try:
            self.age_s = retention_age_s(retention)
        except ValueError as exc:  # a typo must not take the replica down: say it, keep all
            logger.error("retention is off: %s", exc)
            self.age_s = None

    def interval(self) -> float:
        return self._interval_s if self.age_s is not None else 0.0

    async def tick(self) -> None:
        if self.age_s is None:
            return
        store = await self._store()
        ttl = 2 * self._interval_s
        if not await asyncio.to_thread(store.claim_lease, RETENTION_LEASE, self._holder, ttl):
            return
        counts = await asyncio.to_thread(prune, store.engine, self._lake_uri, self.age_s)
        self.last = counts
        logger.info(
            "retention: archived and removed %d predictions and %d feedback rows older than"
            " %.0f s (%d day partitions dropped)",
            counts.predictions,
            counts.feedback,
            self.age_s,
            counts.partitions,
        )


LAKE_FLUSH_POLL_S = 5.0  # how often a replica looks whether its lake rows are due


class LakeFlusher(Loop):
    """Write the replica's buffered event rows to the lake when a file's worth is waiting
    or the oldest has waited ``lake_append_s``, while the served config asks for it."""

    name = "lake appender"

    def __init__(self, current: Callable[[], ServingState | None], appender: LakeAppender):
        super().__init__()
        self._current = current
        self.appender = appender

    def _age_s(self) -> float:
        """The served config's ``lake_append_s``; 0: appending is off."""
        state = self._current()
        return state.config.lake_append_s if state is not None else 0.0

    def enabled(self) -> bool:
        return self._age_s() > 0

    def interval(self) -> float:
        age = self._age_s()
        if age > 0:
            return min(age, LAKE_FLUSH_POLL_S)
        return LAKE_FLUSH_POLL_S if self.appender.pending else 0.0  # what was left: write it

    async def tick(self) -> None:
        age = self._age_s()
        if age <= 0 or self.appender.due(age):  # switched off: write what was left
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now (also at shutdown); a lake error is logged, the rows
        kept for the next try."""
        if not self.appender.pending:
            return
        try:
            await asyncio.to_thread(self.appender.flush)
        except RaysplitError as exc:
            logger.warning("lake append: %s (%d rows kept)", exc, self.appender.pending)
