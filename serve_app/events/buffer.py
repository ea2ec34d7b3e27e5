"""Events leave the request path through a bounded in-memory queue and one writer task.

The request path only appends (O(1), never blocks). One background task does every
database write, in batches, so no two writes ever race and a durable waiter is released
by the batch that holds its own event. The writer tells two failures apart:

- the database is unreachable (or refuses every write): the batch stays queued in order,
  and the writer backs off, doubling up to ``max_backoff_s``; waiters do not cut the
  backoff short, so an outage is not hammered with one reconnect per request;
- the database answers but refuses some rows (a value it cannot hold): the batch is split
  in halves until the refused rows stand alone; those are set aside with the reason
  (counted, logged, the latest kept for ``GET /models``) and every other row is written.

What could not even be queued (the queue is full) is counted as dropped, never silently
lost, and its request is never answered ``stored``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from raysplit.core.events import (
    AllocationEvent,
    Event,
    FeedbackEvent,
    Judgement,
    PredictionEvent,
)
from serve_app.config.constants import REFUSED_KEPT

logger = logging.getLogger("ray.serve")


class Store(Protocol):
    def write(self, events: Sequence[Event]) -> set[str]: ...

    def reachable(self) -> bool: ...


class RefusedEvent(BaseModel):
    """A row the database would not take, set aside so the rows behind it keep flowing."""

    kind: str
    request_id: str
    reason: str


class EventStats(BaseModel):
    """The writer's figures, shown in ``GET /models`` and exported as gauges."""

    queued: int
    written: int
    dropped: int
    refused: int
    failed_flushes: int
    last_error: str | None
    refused_recent: list[RefusedEvent]


@dataclass
class _Entry:
    seq: int
    event: Event


@dataclass
class WriteOutcome:
    """What one batch came to: written, refused (with reasons), or still to write."""

    written: list[_Entry] = field(default_factory=list)
    refused: list[tuple[_Entry, str]] = field(default_factory=list)
    unwritten: list[_Entry] = field(default_factory=list)
    new_feedback: set[str] = field(default_factory=set)
    error: str | None = None


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def write_isolating(store: Store, entries: list[_Entry]) -> WriteOutcome:
    """Write ``entries``, bisecting a refused batch down to the rows the database refuses.

    A failure while the database does not answer a probe is an outage: what is not yet
    written comes back as ``unwritten``, in order, for a later attempt. Rows are written
    idempotently, so a chunk written before an outage is never duplicated by a retry.
    """
    outcome = WriteOutcome()
    pending: deque[list[_Entry]] = deque([entries])
    while pending:
        chunk = pending.popleft()
        try:
            outcome.new_feedback |= store.write([e.event for e in chunk])
        except Exception as exc:
            if not store.reachable():
                outcome.unwritten = [e for c in (chunk, *pending) for e in c]
                outcome.error = describe(exc)
                return outcome
            if len(chunk) == 1:
                outcome.refused.append((chunk[0], describe(exc)))
                continue
            middle = len(chunk) // 2
            pending.extendleft([chunk[middle:], chunk[:middle]])
            continue
        outcome.written.extend(chunk)
    return outcome


def _request_id(event: Event) -> str:
    return getattr(event, "request_id", "")


class EventBuffer:
    def __init__(
        self,
        connect: Callable[[], Store],
        capacity: int = 20_000,
        batch_size: int = 500,
        interval_s: float = 0.5,
        max_backoff_s: float = 10.0,
        on_feedback: Callable[[Judgement], None] | None = None,
        on_written: Callable[[list[Event]], None] | None = None,
        writer: Callable[[list[_Entry]], WriteOutcome] | None = None,
    ):
        self._connect = connect
        self.store: Store | None = None
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._on_feedback = on_feedback
        self._on_written = on_written  # every stored event, once (the lake appender)
        # where a batch is written (in a worker thread): by default on self.store in this
        # process, or elsewhere (serve_app.events.writer_process: a child process)
        self._writer = writer or self._write_here
        self._queue: deque[_Entry] = deque()
        self._in_flight: list[_Entry] = []
        self._next_seq = 1
        self._done_through = 0  # every seq up to this one is written or refused (FIFO)
        self._waiters: dict[int, list[asyncio.Future[bool]]] = {}
        self._refused_seqs: deque[int] = deque(maxlen=REFUSED_KEPT)
        self._refused_recent: deque[RefusedEvent] = deque(maxlen=REFUSED_KEPT)
        self.written = 0
        self.dropped = 0
        self.refused = 0
        self.failed_flushes = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._control = False  # a new interval or shutdown: cuts any wait short
        self._closing = False

    # -- request path: O(1), never blocks -------------------------------------------
    def _add(self, event: Event) -> int | None:
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            return None
        seq = self._next_seq
        self._next_seq += 1
        self._queue.append(_Entry(seq, event))
        return seq

    def add_prediction(self, event: PredictionEvent) -> int | None:
        """Queue the event; its ticket for :meth:`stored`, or ``None`` if it was dropped."""
        return self._add(event)

    def add_feedback(self, event: FeedbackEvent) -> bool:
        return self._add(event) is not None

    def add_allocation(self, event: AllocationEvent) -> None:
        """Record the allocation a new config serves; never dropped (one per reconfigure),
        and queued before the events assigned under it."""
        seq = self._next_seq
        self._next_seq += 1
        self._queue.append(_Entry(seq, event))

    async def stored(self, ticket: int | None, timeout_s: float) -> bool:
        """Wait until the event behind ``ticket`` is in the database (``durable_events``).

        Group commit: a waiter asks the writer to write now, and whatever queued meanwhile
        goes in the same write. ``False`` for a dropped or refused event, and after
        ``timeout_s`` (the database is slow or down): the caller answers anyway and says
        the event is only queued.
        """
        if ticket is None:
            return False
        return await self._wait_for(ticket, timeout_s)

    async def _wait_for(self, seq: int, timeout_s: float) -> bool:
        if seq <= self._done_through:
            return seq not in self._refused_seqs
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(seq, []).append(future)
        self._signal()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._in_flight)

    def pending_predictions(self, request_ids: set[str]) -> dict[str, PredictionEvent]:
        """Live predictions not yet written (feedback may arrive before they are)."""
        found = {}
        for entry in (*self._in_flight, *self._queue):
            event = entry.event
            if (
                isinstance(event, PredictionEvent)
                and not event.shadow
                and event.request_id in request_ids
            ):
                found[event.request_id] = event
        return found

    def stats(self) -> EventStats:
        return EventStats(
            queued=self.queued,
            written=self.written,
            dropped=self.dropped,
            refused=self.refused,
            failed_flushes=self.failed_flushes,
            last_error=self.last_error,
            refused_recent=list(self._refused_recent),
        )

    # -- the writer ----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def set_interval(self, interval_s: float) -> None:
        """A new flush interval takes effect now, not after the current (maybe long) wait."""
        if interval_s != self.interval_s:
            self.interval_s = interval_s
            self._control = True
            self._signal()

    def _urgent(self) -> bool:
        """Someone waits for an event that is queued: write now (group commit)."""
        return bool(self._waiters) and bool(self._queue)

    async def _sleep(self, seconds: float, waiters_wake: bool) -> None:
        """Sleep up to ``seconds``; a control change or shutdown cuts it short, and so
        does a waiter unless the writer is backing off from a failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self._closing:
            if self._control:
                self._control = False
                return
            if waiters_wake and self._urgent():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _run(self) -> None:
        backoff = self.interval_s
        healthy = True
        while not self._closing:
            await self._sleep(self.interval_s if healthy else backoff, waiters_wake=healthy)
            if self._closing:
                return
            healthy = await self._write_batch()
            backoff = self.interval_s if healthy else min(backoff * 2, self.max_backoff_s)

    async def _write_batch(self) -> bool:
        """Write one batch from the front of the queue; ``False`` on an outage."""
        if not self._queue:
            return True
        self._in_flight = [
            self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
        ]
        try:
            outcome = await asyncio.to_thread(self._writer, self._in_flight)
        except Exception as exc:  # could not even connect
            outcome = WriteOutcome(unwritten=self._in_flight, error=describe(exc))
        finally:
            self._in_flight = []
        self._settle(outcome)
        return outcome.error is None

    def _write_here(self, entries: list[_Entry]) -> WriteOutcome:
        if self.store is None:
            self.store = self._connect()
        return write_isolating(self.store, entries)

    def _settle(self, outcome: WriteOutcome) -> None:
        self._queue.extendleft(reversed(outcome.unwritten))  # back in front, in order
        self.written += len(outcome.written)
        if self._on_written is not None and outcome.written:
            self._on_written([entry.event for entry in outcome.written])
        for entry, reason in outcome.refused:
            self._set_aside(entry, reason)
        if self._on_feedback is not None:
            # a batch can hold the same feedback twice (a client retrying within one
            # flush interval): the store kept the first, so only the first is counted
            uncounted = set(outcome.new_feedback)
            for entry in outcome.written:
                event = entry.event
                if isinstance(event, FeedbackEvent) and event.request_id in uncounted:
                    uncounted.discard(event.request_id)
                    if event.judgement is not None:
                        self._on_feedback(event.judgement)
        if outcome.error is not None:
            self.failed_flushes += 1
            self.last_error = outcome.error
            logger.warning("event store write failed (%d queued): %s", self.queued, outcome.error)
        else:
            self.last_error = None
        done = self._queue[0].seq - 1 if self._queue else self._next_seq - 1
        self._done_through = max(self._done_through, done)
        refused = {entry.seq for entry, _ in outcome.refused}
        for seq in [s for s in self._waiters if s <= self._done_through]:
            for future in self._waiters.pop(seq):
                if not future.done():
                    future.set_result(seq not in refused)

    def _set_aside(self, entry: _Entry, reason: str) -> None:
        event = entry.event
        kind = {PredictionEvent: "prediction", FeedbackEvent: "feedback"}.get(
            type(event), "allocation"
        )
        self.refused += 1
        self._refused_seqs.append(entry.seq)
        self._refused_recent.append(
            RefusedEvent(kind=kind, request_id=_request_id(event)[:200], reason=reason)
        )
        logger.error(
            "event store refused a %s event (request id %r), set aside: %s",
            kind,
            _request_id(event)[:200],
            reason,
        )

    async def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (graceful shutdown), within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._closing = True
        if self._task is not None:  # never cancelled mid-write: it finishes its batch
            self._signal()
            await asyncio.wait([self._task], timeout=timeout_s)
        while self._queue and loop.time() < deadline:
            if not await self._write_batch():
                await asyncio.sleep(0.2)
        if self.queued:
            logger.error("shutting down with %d events not written", self.queued)
