"""A replica's jobs toward the lake. Appending: every event its writer stored reaches the
lake as Parquet, refused ones never, and rows wait (bounded) while the lake is down.
Retention: the cluster keeps it itself: the replica holding the
``retention`` lease archives and removes raw events older than ``RAYSPLIT_RETENTION``; the
others leave it alone; a typo turns retention off with a logged reason instead of failing
the replica. Real SQLite and PostgreSQL stores, real Parquet files."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.lake.appender import LakeAppender
from raysplit.eventstore.lake.files import read_table
from raysplit.eventstore.store import EventStore
from serve_app.events.buffer import EventBuffer
from serve_app.replica.lake_jobs import RetentionJob, retention_age_s
from tests.events import feedback, prediction
from tests.integration.test_event_store import poison

pytestmark = pytest.mark.integration

DAY = 86_400


def _requests(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT request_id FROM raysplit_predictions")).scalars()
        ids = sorted(found)
    engine.dispose()
    return ids


def test_one_lease_holder_archives_and_removes_what_is_older_than_the_retention(
    store_url: str, tmp_path: Path
) -> None:
    now = time.time()
    store = EventStore(store_url)
    store.write(
        [
            prediction("old", created_at=now - 40 * DAY, predictions=["setosa"]),
            feedback("old", "setosa", at=now - 40 * DAY + 60),
            prediction("recent", created_at=now - 2 * DAY, predictions=["setosa"]),
        ]
    )
    cells = store.queries("iris-ab", True).aggregates("champion").cells
    lake = str(tmp_path / "lake")

    async def store_of() -> EventStore:
        return store

    first = RetentionJob(store_of, "replica-a", "30d", lake)
    second = RetentionJob(store_of, "replica-b", "30d", lake)
    assert first.interval() > 0
    asyncio.run(first.tick())
    asyncio.run(second.tick())  # the lease is replica-a's: nothing to do

    assert first.last is not None and (first.last.predictions, first.last.feedback) == (1, 1)
    assert second.last is None
    assert _requests(store_url) == ["recent"]
    assert read_table(lake, "predictions")["request_id"].to_pylist() == ["old"]
    assert store.queries("iris-ab", True).aggregates("champion").cells == cells
    store.dispose()


def test_without_a_retention_nothing_runs_and_a_typo_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    async def no_store() -> EventStore:
        raise AssertionError("a job that is off must not open the store")

    assert RetentionJob(no_store, "r", None, str(tmp_path)).interval() == 0
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        job = RetentionJob(no_store, "r", "30 days", str(tmp_path))
    assert job.interval() == 0
    asyncio.run(job.tick())
    assert "RAYSPLIT_RETENTION='30 days' is not a positive duration" in caplog.text
    assert retention_age_s("36h") == 36 * 3600
    with pytest.raises(ValueError, match="'0d' is not a positive duration"):
        retention_age_s("0d")


class Clock:
    """A hand-set clock, so "a minute later" takes no minute."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_writer_hands_every_stored_event_once_and_refused_ones_never(
    store_url: str, tmp_path: Path
) -> None:
    """EventBuffer -> LakeAppender -> Parquet: what the database stored reaches the lake,
    with its feedback; a row the database refused does not; a flush waits for a file's
    worth of rows or for the configured age."""
    store = EventStore(store_url)
    bad = poison(store.engine.dialect.name)
    clock = Clock()
    appender = LakeAppender(str(tmp_path / "lake"), max_rows=1000, clock=clock)
    buffer = EventBuffer(lambda: store, interval_s=0.01, batch_size=16, on_written=appender.add)

    async def scenario() -> None:
        buffer.start()
        for i in range(30):
            buffer.add_prediction(prediction(f"p{i}", predictions=["setosa"]))
        for event in bad:
            buffer.add_prediction(event)
        for i in range(0, 30, 3):
            buffer.add_feedback(feedback(f"p{i}", "setosa", at=time.time()))
        await buffer.close()

    asyncio.run(scenario())
    assert buffer.refused == len(bad)
    assert appender.pending == 30 + 10 and not appender.due(60)
    clock.now = 61  # a minute on
    assert appender.due(60)
    assert appender.flush() == 40 and appender.pending == 0
    lake = str(tmp_path / "lake")
    assert sorted(read_table(lake, "predictions")["request_id"].to_pylist()) == sorted(
        f"p{i}" for i in range(30)
    )
    assert len(read_table(lake, "feedback")) == 10
    assert appender.stats().appended == 40 and appender.stats().files >= 2
    store.dispose()


def test_rows_wait_while_the_lake_cannot_be_written_and_the_oldest_go_past_the_bound(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    appender = LakeAppender(str(blocked), max_rows=5, max_pending=8)
    appender.add([prediction(f"p{i}") for i in range(6)])
    assert appender.due(3600)  # a file's worth of rows, however young
    with pytest.raises(RaysplitError, match="cannot write predictions"):
        appender.flush()
    assert appender.pending == 6  # kept for the next flush
    appender.add([prediction(f"q{i}") for i in range(4)])
    assert (appender.pending, appender.stats().dropped) == (8, 2)
    appender.lake_uri = str(tmp_path / "lake")  # the lake is back
    assert appender.flush() == 8
    kept = sorted(read_table(appender.lake_uri, "predictions")["request_id"].to_pylist())
    assert kept == sorted([*(f"p{i}" for i in range(2, 6)), *(f"q{i}" for i in range(4))])
