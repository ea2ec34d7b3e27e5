"""Events leave the request path through a bounded in-memory queue.

A background task writes them in batches. A slow, locked or absent database never slows
or fails a prediction: rows wait (up to ``capacity``), failed batches are retried with
backoff, and what could not be queued is counted as dropped, never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("ray.serve")


class Store(Protocol):
    def write(self, prediction_rows: list[dict], feedback_rows: list[dict]) -> None: ...


class EventBuffer:
    def __init__(
        self,
        connect: Callable[[], Store],
        capacity: int = 20_000,
        batch_size: int = 500,
        interval_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ):
        self._connect = connect
        self.store: Store | None = None
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._predictions: deque[dict[str, Any]] = deque()
        self._feedback: deque[dict[str, Any]] = deque()
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False
        # predictions enqueued / written, in order: the queue is FIFO (a failed batch goes
        # back in front), so prediction n is in the database once written >= n
        self._enqueued = 0
        self._written_predictions = 0
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    # -- request path: O(1), never blocks -------------------------------------------
    def _add(self, queue: deque, row: dict[str, Any]) -> bool:
        if len(self._predictions) + len(self._feedback) >= self.capacity:
            self.dropped += 1
            return False
        queue.append(row)
        return True

    def add_prediction(self, row: dict[str, Any]) -> bool:
        added = self._add(self._predictions, row)
        self._enqueued += added
        return added

    async def stored(self, timeout_s: float) -> bool:
        """Wait until every prediction queued so far is in the database (``durable_events``).

        Group commit: the flusher writes as soon as anyone waits, and everything that queued
        meanwhile goes in the same write. ``False`` after ``timeout_s`` (the database is slow
        or down): the caller answers anyway and says the event is only queued.
        """
        target = self._enqueued
        if self._written_predictions >= target:
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        if self._wake is not None:
            self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False

    def add_feedback(self, row: dict[str, Any]) -> bool:
        return self._add(self._feedback, row)

    @property
    def queued(self) -> int:
        return len(self._predictions) + len(self._feedback)

    def pending_predictions(self, request_ids: set[str]) -> dict[str, dict[str, Any]]:
        """Live predictions still queued (feedback may arrive before they are written)."""
        return {
            row["request_id"]: row
            for row in self._predictions
            if not row["shadow"] and row["request_id"] in request_ids
        }

    def stats(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "failed_flushes": self.failed_flushes,
            "last_error": self.last_error,
        }

    # -- background ---------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def set_interval(self, interval_s: float) -> None:
        """A new flush interval takes effect now, not after the current (maybe long) wait."""
        if interval_s != self.interval_s:
            self.interval_s = interval_s
            if self._wake is not None:
                self._wake.set()

    async def _run(self) -> None:
        backoff = self.interval_s
        while not self._closing:
            # wait unless someone waits for rows that are queued: with nothing queued (rows
            # in flight in another flush) going round again would spin without yielding
            if self.last_error or not (self._waiters and self.queued):
                # a wake-up (a waiter, a new interval, shutdown) cuts the wait short
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), backoff if self.last_error else self.interval_s
                    )
            self._wake.clear()
            if self._closing:
                return
            if await self.flush():
                backoff = self.interval_s
            else:
                backoff = min(backoff * 2, self.max_backoff_s)

    async def flush(self) -> bool:
        """Write one batch of each kind; on failure put it back in front, in order."""
        if not self.queued:
            return True
        predictions = [
            self._predictions.popleft() for _ in range(min(self.batch_size, len(self._predictions)))
        ]
        feedback = [
            self._feedback.popleft() for _ in range(min(self.batch_size, len(self._feedback)))
        ]
        try:
            if self.store is None:
                self.store = await asyncio.to_thread(self._connect)
            await asyncio.to_thread(self.store.write, predictions, feedback)
        except Exception as exc:  # any database failure: keep the rows, retry later
            self._predictions.extendleft(reversed(predictions))
            self._feedback.extendleft(reversed(feedback))
            self.failed_flushes += 1
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            logger.warning("event store write failed (%d queued): %s", self.queued, self.last_error)
            return False
        self.written += len(predictions) + len(feedback)
        self._written_predictions += len(predictions)
        while self._waiters and self._waiters[0][0] <= self._written_predictions:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(True)
        self.last_error = None
        return True

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (graceful shutdown or reconfigure), within ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._closing = True
        if self._task is not None:  # never cancelled mid-write: it finishes its batch
            self._wake.set()
            await asyncio.wait([self._task], timeout=timeout_s)
        while self.queued and loop.time() < deadline:
            if not await self.flush():
                await asyncio.sleep(0.2)
        if self.queued:
            logger.error("shutting down with %d events not written", self.queued)
