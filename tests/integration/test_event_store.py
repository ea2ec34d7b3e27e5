"""The event store on real SQLite and PostgreSQL, and the buffer in front of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from serve_app.event_buffer import EventBuffer
from serve_app.event_store import (
    SCHEMA_VERSION,
    EventStore,
    SchemaError,
    predictions,
    schema_info,
)
from tests.conftest import free_port
from tests.events import feedback, prediction

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url = request.getfixturevalue("events_postgres")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # each test starts empty
        for table in (
            "raysplit_predictions",
            "raysplit_feedback",
            "raysplit_schema",
            "raysplit_report_lease",
        ):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()
    return url


def test_writes_are_idempotent_per_request(store_url: str) -> None:
    store = EventStore(store_url)
    live, shadow = prediction("r1"), prediction("r1", "shadow-hgb", shadow=True)
    assert store.write([live, shadow, feedback("r1", "setosa")]) == {"r1"}
    assert store.write([live, feedback("r1", "virginica", at=2.0)]) == set()  # a repeat
    rows = store.recent_predictions(10)
    assert sorted((r["variant"], r["shadow"]) for r in rows) == [
        ("champion", False),
        ("shadow-hgb", True),
    ]
    assert rows[0]["inputs"] == [[5.1, 3.5, 1.4, 0.2]]
    with store.engine.connect() as conn:
        labels = conn.execute(sa.text("SELECT label FROM raysplit_feedback")).scalars().all()
    assert labels in (["setosa"], ['"setosa"'])  # the first feedback wins
    assert store.live_predictions(["r1", "r2"]) == {
        "r1": {
            "request_id": "r1",
            "experiment": "iris-ab",
            "variant": "champion",
            "predictions": ["setosa"],
        }
    }
    store.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"


def test_schema_is_versioned_and_a_newer_one_is_refused(store_url: str) -> None:
    assert EventStore(store_url).version == SCHEMA_VERSION
    assert EventStore(store_url).version == SCHEMA_VERSION  # opening again migrates nothing
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(schema_info.update().values(version=99))
    with pytest.raises(SchemaError, match="schema v99 is newer than this raysplit"):
        EventStore(store_url)


V1_TABLES = [
    "CREATE TABLE raysplit_schema (version INTEGER NOT NULL)",
    "INSERT INTO raysplit_schema VALUES (1)",
    """CREATE TABLE raysplit_predictions (id {serial} PRIMARY KEY, request_id VARCHAR(128)
    NOT NULL, variant VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, experiment
    VARCHAR(128) NOT NULL, model_name VARCHAR(256) NOT NULL, model_version VARCHAR(32),
    shadow BOOLEAN NOT NULL, inputs JSON NOT NULL, predictions JSON NOT NULL, probabilities
    JSON, latency_ms FLOAT NOT NULL, CONSTRAINT uq_prediction_request_variant
    UNIQUE (request_id, variant))""",
    """INSERT INTO raysplit_predictions (request_id, variant, created_at, experiment,
    model_name, model_version, shadow, inputs, predictions, latency_ms) VALUES ('old',
    'champion', 1.0, 'iris-ab', 'iris', '1', false, '[[1, 2, 3, 4]]', '["setosa"]', 0.5)""",
]


def test_a_version_1_database_is_migrated_in_place(store_url: str) -> None:
    """A database written by the first release keeps its rows and gains the outcome
    columns: its predictions count as served."""
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
        for statement in V1_TABLES:
            conn.execute(sa.text(statement.replace("{serial}", serial)))
    store = EventStore(store_url)
    assert store.version == SCHEMA_VERSION == 3
    store.write([prediction("new", outcome="error", error="ValueError: boom")])
    rows = {r["request_id"]: r for r in store.experiment_rows("iris-ab")}
    assert rows["old"]["outcome"] == "ok"
    assert store.recent_inputs("iris-ab", "champion", 10) == [[1, 2, 3, 4]]  # "new" failed
    assert rows["new"]["outcome"] == "error"
    store.dispose()
    engine.dispose()


def test_one_replica_at_a_time_holds_the_report_lease(store_url: str) -> None:
    """The holder renews; others wait until it lapses; experiments are independent."""
    a, b = EventStore(store_url), EventStore(store_url)  # two replicas, one database
    assert a.claim_report("iris-ab", "replica-a", ttl_s=90, now=1000.0)
    assert not b.claim_report("iris-ab", "replica-b", ttl_s=90, now=1001.0)
    assert a.claim_report("iris-ab", "replica-a", ttl_s=90, now=1030.0)  # renewed to 1120
    assert not b.claim_report("iris-ab", "replica-b", ttl_s=90, now=1119.0)
    assert b.claim_report("iris-ab", "replica-b", ttl_s=90, now=1121.0)  # a went quiet
    assert not a.claim_report("iris-ab", "replica-a", ttl_s=90, now=1122.0)
    assert a.claim_report("other-experiment", "replica-a", ttl_s=90, now=1122.0)
    a.dispose()
    b.dispose()


def test_buffer_keeps_events_while_the_database_is_down(store_url: str) -> None:
    """Down at first (nothing listens), back later: every queued event is written."""
    down_url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    target = {"url": down_url}
    buffer = EventBuffer(lambda: EventStore(target["url"]), capacity=50)

    async def scenario() -> None:
        buffer.start()
        for i in range(40):
            assert buffer.add_prediction(prediction(f"q{i}"))
        while not buffer.failed_flushes:
            await asyncio.sleep(0.05)
        assert buffer.queued == 40
        assert "OperationalError" in buffer.last_error
        for i in range(40, 60):  # over capacity: counted, not lost silently
            buffer.add_prediction(prediction(f"q{i}"))
        assert (buffer.queued, buffer.dropped) == (50, 10)
        target["url"] = store_url
        await buffer.close(timeout_s=30)

    asyncio.run(scenario())
    assert (buffer.queued, buffer.written) == (0, 50)
    with buffer.store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar() == 50
