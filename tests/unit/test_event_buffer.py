"""The event buffer against a real SQLite event store: interval changes, shutdown flush,
and an unreachable store that keeps every row queued."""

from __future__ import annotations

import asyncio
from pathlib import Path

from raysplit.core.events import PredictionEvent
from raysplit.eventstore.store import EventStore
from serve_app.events.buffer import EventBuffer
from tests.events import prediction as event


def prediction(i: int) -> PredictionEvent:
    return event(f"r{i}", experiment="buffer")


def stored(url: str) -> int:
    return len(EventStore(url).recent_predictions(10_000, None, None))


def test_a_shorter_interval_takes_effect_without_waiting_out_the_long_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"

    async def run() -> int:
        buffer = EventBuffer(lambda: EventStore(url), interval_s=3600)
        buffer.start()
        for i in range(10):
            buffer.add_prediction(prediction(i))
        await asyncio.sleep(0.2)
        assert buffer.queued == 10  # an hour's interval: nothing written yet
        buffer.set_interval(0.05)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not buffer.queued:
                break
        await buffer.close()
        return buffer.written

    assert asyncio.run(run()) == 10
    assert stored(url) == 10


def test_close_writes_everything_queued(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"

    async def run() -> EventBuffer:
        buffer = EventBuffer(lambda: EventStore(url), interval_s=3600, batch_size=7)
        buffer.start()
        for i in range(50):
            buffer.add_prediction(prediction(i))
        await buffer.close()
        return buffer

    buffer = asyncio.run(run())
    assert (buffer.queued, buffer.written, buffer.dropped) == (0, 50, 0)
    assert stored(url) == 50


def test_an_unreachable_store_keeps_rows_queued_and_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'events.db'}"  # cannot be opened

    async def run() -> EventBuffer:
        buffer = EventBuffer(lambda: EventStore(url), interval_s=0.01, capacity=5)
        buffer.start()
        for i in range(8):
            buffer.add_prediction(prediction(i))
        await asyncio.sleep(0.2)
        await buffer.close(timeout_s=0.3)
        return buffer

    buffer = asyncio.run(run())
    assert buffer.queued == 5 and buffer.dropped == 3 and buffer.written == 0
    assert buffer.failed_flushes > 0 and "OperationalError" in buffer.last_error


def test_a_durable_wait_returns_once_the_rows_are_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"

    async def run() -> tuple[bool, int]:
        buffer = EventBuffer(lambda: EventStore(url), interval_s=3600)
        buffer.start()
        tickets = [buffer.add_prediction(prediction(i)) for i in range(3)]
        waited = await asyncio.gather(*(buffer.stored(t, timeout_s=30) for t in tickets))
        written = stored(url)  # before close(): the waits alone got the rows written
        await buffer.close()
        return all(waited), written

    assert asyncio.run(run()) == (True, 3)


def test_a_durable_wait_gives_up_when_the_store_is_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'events.db'}"

    async def run() -> tuple[bool, int]:
        buffer = EventBuffer(lambda: EventStore(url), interval_s=3600)
        buffer.start()
        waited = await buffer.stored(buffer.add_prediction(prediction(0)), timeout_s=0.3)
        await buffer.close(timeout_s=0.1)
        return waited, buffer.queued

    assert asyncio.run(run()) == (False, 1)
