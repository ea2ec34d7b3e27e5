"""The cluster keeps the event store's retention itself: the replica holding the
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

from raysplit.eventstore.lake.files import read_table
from raysplit.eventstore.store import EventStore
from serve_app.replica.retention import RetentionJob, retention_age_s
from tests.events import feedback, prediction

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
