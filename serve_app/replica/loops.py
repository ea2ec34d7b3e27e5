"""The replica's background jobs, each an object with a start/stop life cycle.

A job runs :meth:`Loop.tick` every :meth:`Loop.interval` seconds; a non-positive interval
pauses it (checked again every ``IDLE_POLL_S``), so a reconfigure can switch a job on or
off without restarting anything. A failing tick is logged and the loop goes on: a
background job must never take the replica down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from raysplit.eventstore.store import EventStore
from serve_app.config.constants import IDLE_POLL_S, LEASE_TTLS
from serve_app.events.buffer import EventBuffer
from serve_app.metrics.experiment import ExperimentMetrics
from serve_app.predict.models import LoadedModel
from serve_app.predict.state import ServingState
from serve_app.report.experiment import ExperimentReport

logger = logging.getLogger("ray.serve")


class Loop:
    name = "loop"

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def interval(self) -> float:
        raise NotImplementedError

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            interval = self.interval()
            await asyncio.sleep(interval if interval > 0 else IDLE_POLL_S)
            if interval <= 0 or self.interval() <= 0:
                continue
            try:
                await self.tick()
            except Exception as exc:
                logger.warning("%s: %s: %s", self.name, type(exc).__name__, exc)


class AliasWatcher(Loop):
    """Follow alias moves (``raysplit promote``) without a deploy.

    ``serve deploy`` with an unchanged config does not call ``reconfigure()``, so a moved
    alias would otherwise never be noticed. A new version is loaded completely before the
    swap; a failure is logged and the current models keep serving.
    """

    name = "alias watcher"

    def __init__(
        self,
        current: Callable[[], ServingState | None],
        load: Callable[[ServingState], dict[str, LoadedModel]],
        swap: Callable[[ServingState, ServingState], bool],
    ):
        super().__init__()
        self._current = current
        self._load = load
        self._swap = swap

    def interval(self) -> float:
        state = self._current()
        return state.config.alias_refresh_s if state else 0.0

    async def tick(self) -> None:
        state = self._current()
        models = await asyncio.to_thread(self._load, state)
        pinned = {n: m.resolved.uri for n, m in models.items()}
        if pinned == {n: m.resolved.uri for n, m in state.models.items()}:
            return
        if self._swap(state, state.rebuilt(models=models)):
            logger.info("alias moved: now serving %s", pinned)


class EventGauges(Loop):
    """The event writer's figures (queue depth, written, dropped, refused) as metrics."""

    name = "event gauges"

    def __init__(self, events: EventBuffer, metrics: ExperimentMetrics, interval_s: float = 5.0):
        super().__init__()
        self._events = events
        self._metrics = metrics
        self._interval_s = interval_s

    def interval(self) -> float:
        return self._interval_s

    async def tick(self) -> None:
        self._metrics.events(self._events.stats())


class ReportPublisher(Loop):
    """The experiment report's gauges (quality, SRM, sequential p-values, drift) every
    ``report_interval_s``, from the one replica that holds the experiment's report lease
    (see :meth:`raysplit.eventstore.store.EventStore.claim_lease`)."""

    name = "report publisher"

    def __init__(
        self,
        current: Callable[[], ServingState | None],
        store: Callable[[], Awaitable[EventStore]],
        build: Callable[[], Awaitable[ExperimentReport]],
        metrics: ExperimentMetrics,
        holder: str,
    ):
        super().__init__()
        self._current = current
        self._store = store
        self._build = build
        self._metrics = metrics
        self._holder = holder
        self.published_at: float | None = None

    def interval(self) -> float:
        state = self._current()
        return state.config.report_interval_s if state else 0.0

    async def tick(self) -> None:
        state = self._current()
        store = await self._store()
        ttl = LEASE_TTLS * state.config.report_interval_s
        if await asyncio.to_thread(store.claim_lease, state.config.experiment, self._holder, ttl):
            self._metrics.report(await self._build())
            self.published_at = time.time()
