"""The event store on real SQLite and PostgreSQL, and the buffer in front of it."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from raysplit.core.events import Judgement
from raysplit.eventstore.partitions import day_of, is_partitioned, partition_days, partition_name
from raysplit.eventstore.schema import CELL_COUNTERS, prediction_keys, units
from raysplit.eventstore.schema import feedback as feedback_table
from raysplit.eventstore.store import (
    SCHEMA_VERSION,
    EventStore,
    SchemaError,
    predictions,
    schema_info,
)
from serve_app.events.buffer import EventBuffer
from serve_app.events.writer_process import ProcessWriter
from serve_app.predict.tally import MetricTally
from tests.conftest import free_port
from tests.events import feedback, prediction

pytestmark = pytest.mark.integration


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
            "inputs": [[5.1, 3.5, 1.4, 0.2]],  # the feedback's covariate is computed from it
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


def outcomes(store: EventStore) -> dict[str, str]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(predictions.c.request_id, predictions.c.outcome))
        return dict(rows.all())


def test_a_version_1_database_is_migrated_in_place(store_url: str) -> None:
    """A database written by the first release keeps its rows and gains the outcome
    columns (its predictions count as served) and v4's: split traffic of epoch 0 (the ""
    allocation), with the single prediction filled in for scoring."""
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
        for statement in V1_TABLES:
            conn.execute(sa.text(statement.replace("{serial}", serial)))
    store = EventStore(store_url)
    assert store.version == SCHEMA_VERSION == 12
    with store.engine.connect() as conn:  # v11: the users' self-join probes an index
        indexes = sa.inspect(conn).get_indexes("raysplit_units")
    assert ["experiment", "unit_hash"] in [i["column_names"] for i in indexes]
    with store.engine.connect() as conn:
        old = conn.execute(sa.select(predictions).where(predictions.c.request_id == "old")).one()
    assert (old.assignment, old.allocation, old.predicted) == ("split", "", "setosa")
    store.write([prediction("new", outcome="error", error="ValueError: boom")])
    if engine.dialect.name == "postgresql":  # v10: the old row moved into its day's partition
        with store.engine.connect() as conn:
            assert is_partitioned(conn, predictions) and not is_partitioned(conn, feedback_table)
            keys = conn.execute(sa.select(prediction_keys.c.request_id)).scalars().all()
            assert sorted(keys) == ["new", "old"]  # the old row's key was filled in
            assert partition_name(predictions, day_of(old.created_at)) in set(
                partition_days(conn, predictions).values()
            )
            ids = dict(conn.execute(sa.select(predictions.c.request_id, predictions.c.id)).all())
        assert ids["new"] > ids["old"]  # the id sequence went on from the old table's
    assert outcomes(store) == {"old": "ok", "new": "error"}
    assert store.recent_inputs("iris-ab", "champion", 10) == [[1, 2, 3, 4]]  # "new" failed
    old_cells = [
        c for c in store.queries("iris-ab", True).aggregates("champion").cells if c.epoch == 0
    ]
    # the old row by the migration's backfill, the new one by its write
    assert sorted((c.variant, c.requests, c.errors) for c in old_cells) == [
        ("champion", 1, 0),
        ("champion", 1, 1),
    ]
    store.dispose()
    engine.dispose()


def test_one_replica_at_a_time_holds_the_report_lease(store_url: str) -> None:
    """The holder renews; others wait until it lapses; experiments are independent."""
    a, b = EventStore(store_url), EventStore(store_url)  # two replicas, one database
    assert a.claim_lease("iris-ab", "replica-a", ttl_s=90, now=1000.0)
    assert not b.claim_lease("iris-ab", "replica-b", ttl_s=90, now=1001.0)
    assert a.claim_lease("iris-ab", "replica-a", ttl_s=90, now=1030.0)  # renewed to 1120
    assert not b.claim_lease("iris-ab", "replica-b", ttl_s=90, now=1119.0)
    assert b.claim_lease("iris-ab", "replica-b", ttl_s=90, now=1121.0)  # a went quiet
    assert not a.claim_lease("iris-ab", "replica-a", ttl_s=90, now=1122.0)
    assert a.claim_lease("other-experiment", "replica-a", ttl_s=90, now=1122.0)
    a.dispose()
    b.dispose()


def test_a_version_6_lease_table_gives_way_to_the_shared_one(store_url: str) -> None:
    """v7 renames the lease table for what it holds (report and rollout jobs): a v6
    database loses raysplit_report_lease (a lease lasts seconds, nothing to copy) and
    gains raysplit_leases, where leases are claimed as before."""
    EventStore(store_url).dispose()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # the database as v6 left it
        conn.execute(sa.text("DROP TABLE raysplit_leases"))
        conn.execute(
            sa.text(
                "CREATE TABLE raysplit_report_lease (experiment VARCHAR(128) PRIMARY KEY,"
                " holder VARCHAR(128) NOT NULL, expires_at FLOAT NOT NULL)"
            )
        )
        conn.execute(sa.text("UPDATE raysplit_schema SET version = 6"))
    store = EventStore(store_url)
    assert store.version == SCHEMA_VERSION
    tables = set(sa.inspect(engine).get_table_names())
    assert "raysplit_leases" in tables and "raysplit_report_lease" not in tables
    assert store.claim_lease("rollout:iris-ab", "replica-a", ttl_s=90, now=1000.0)
    assert not store.claim_lease("rollout:iris-ab", "replica-b", ttl_s=90, now=1001.0)
    store.dispose()
    engine.dispose()


def test_a_version_7_store_gains_each_sticky_users_counts(store_url: str) -> None:
    """v8 keeps each sticky user's own counts (their variance is a user's): a v7 store's
    units, which only listed the users, are recounted from the rows it holds."""
    store = EventStore(store_url)
    events = [
        prediction(f"u{i}-{j}", assignment="sticky", allocation="a1", unit_hash=f"user{i}")
        for i in range(3)
        for j in range(i + 1)
    ]
    store.write([*events, feedback("u2-0"), feedback("u2-1", label="virginica")])
    store.dispose()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # the units table as v7 left it: no counts
        for name in CELL_COUNTERS:
            conn.execute(sa.text(f"ALTER TABLE raysplit_units DROP COLUMN {name}"))
        conn.execute(sa.text("UPDATE raysplit_schema SET version = 7"))
    store = EventStore(store_url)
    assert store.version == SCHEMA_VERSION
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(units.c.unit_hash, units.c.requests, units.c.labelled, units.c.correct)
        ).all()
    assert sorted(map(tuple, rows)) == [("user0", 1, 0, 0), ("user1", 2, 0, 0), ("user2", 3, 2, 1)]
    store.dispose()
    engine.dispose()


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


def poison(dialect: str) -> list:
    """Events this database refuses while it takes every other row: PostgreSQL holds no
    request id over 128 characters and no NUL byte; SQLite keeps NOT NULL."""
    if dialect == "postgresql":
        return [prediction("x" * 200), prediction("nul\x00byte")]
    return [prediction("no-model", model_name=None)]


def count_rows(store: EventStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar()


def test_a_refused_row_is_set_aside_and_every_other_row_is_written(store_url: str) -> None:
    """One row the database refuses used to send its whole batch back to the front, forever,
    while every later event queued behind it until the buffer dropped them."""
    store = EventStore(store_url)
    bad = poison(store.engine.dialect.name)
    buffer = EventBuffer(lambda: store, interval_s=0.01, batch_size=50)

    async def scenario() -> list[bool]:
        buffer.start()
        tickets = [buffer.add_prediction(prediction(f"a{i}")) for i in range(20)]
        refused = [buffer.add_prediction(event) for event in bad]
        tickets += [buffer.add_prediction(prediction(f"b{i}")) for i in range(20)]
        waited = await asyncio.gather(*(buffer.stored(t, 30) for t in tickets + refused))
        later = buffer.add_prediction(prediction("later"))  # the pipeline still flows
        waited.append(await buffer.stored(later, 30))
        await buffer.close()
        return waited

    waited = asyncio.run(scenario())
    assert waited == [True] * 40 + [False] * len(bad) + [True]
    assert count_rows(store) == 41
    stats = buffer.stats()
    assert (stats.written, stats.refused, stats.queued, stats.dropped) == (41, len(bad), 0, 0)
    assert [r.request_id for r in stats.refused_recent] == [e.request_id for e in bad]
    assert all(r.kind == "prediction" and r.reason for r in stats.refused_recent)
    assert stats.failed_flushes == 0  # a refused row is not an outage
    store.dispose()


def test_durable_waiters_do_not_cut_the_outage_backoff_short() -> None:
    """During an outage every durable request used to wake the writer: one reconnect per
    request instead of a doubling backoff."""
    down_url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    buffer = EventBuffer(lambda: EventStore(down_url), interval_s=0.05, max_backoff_s=10)

    async def scenario() -> list[bool]:
        buffer.start()
        waits = []
        for i in range(100):  # a request every 20 ms for two seconds
            ticket = buffer.add_prediction(prediction(f"r{i}"))
            waits.append(asyncio.create_task(buffer.stored(ticket, 0.2)))
            await asyncio.sleep(0.02)
        answers = await asyncio.gather(*waits)
        await buffer.close(timeout_s=0.1)
        return answers

    assert not any(asyncio.run(scenario()))
    # attempts at 0.05, then backoff 0.1, 0.2, 0.4, 0.8, ...: at most 6 within ~2 s
    assert 1 <= buffer.failed_flushes <= 6
    assert buffer.queued == 100 and buffer.dropped == 0


def test_feedback_is_counted_once_however_often_it_is_posted(store_url: str) -> None:
    """The Prometheus feedback counters count what the store keeps: a client retrying, or
    posting to two replicas, must not make the online accuracy drift from the report's."""
    store = EventStore(store_url)
    tally = MetricTally()
    judged = Judgement("iris-ab", "champion", correct=True, abs_error=None)
    buffers = [
        EventBuffer(lambda: store, interval_s=0.01, on_feedback=tally.feedback) for _ in range(2)
    ]

    async def scenario() -> None:
        for buffer in buffers:  # two replicas
            buffer.start()
            buffer.add_prediction(prediction("r1"))
            for _ in range(2):  # twice within the batch that first stores it
                buffer.add_feedback(feedback("r1", judgement=judged))
            for _ in range(3):  # and again, three times, to each replica
                await asyncio.sleep(0.05)  # in separate batches
                buffer.add_feedback(feedback("r1", judgement=judged))
            await buffer.close()

    asyncio.run(scenario())
    assert tally.counts["feedback"] == {("iris-ab", "champion", "true"): 1}
    store.dispose()


def _open_store(url: str, start: float) -> int:
    time.sleep(max(0.0, start - time.time()))  # all processes open the store together
    store = EventStore(url)
    store.dispose()
    return store.version


def test_a_store_opened_while_another_holds_the_write_lock_waits_for_it(tmp_path: Path) -> None:
    """SQLite refuses a switch to WAL at once, busy timeout or not, while another connection
    holds the write lock: a replica opening a new store beside one that was migrating it
    failed with "database is locked" (seen once in a full run of the test below)."""
    path = tmp_path / "events.db"
    # a rollback-journal database, its write lock taken as a migrating replica takes it
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE t (i INTEGER)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES (1)")
    released = threading.Timer(0.5, other.execute, ["COMMIT"])
    released.start()
    try:
        store = EventStore(f"sqlite:///{path}")
    finally:
        released.join()
        other.close()
    assert store.version == SCHEMA_VERSION
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.dispose()


def test_replicas_starting_together_migrate_an_old_database_once(store_url: str) -> None:
    """Each replica used to read the old version and run the same ALTER TABLE; all but one
    failed. The migration now holds a lock (advisory on PostgreSQL, BEGIN IMMEDIATE on
    SQLite)."""
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
        for statement in V1_TABLES:
            conn.execute(sa.text(statement.replace("{serial}", serial)))
    engine.dispose()
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        start = time.time() + 3.0  # after every worker has imported raysplit
        versions = pool.starmap(_open_store, [(store_url, start)] * 6)
    assert versions == [SCHEMA_VERSION] * 6
    store = EventStore(store_url)
    assert outcomes(store) == {"old": "ok"}
    store.dispose()


def test_a_writer_process_writes_isolates_refused_rows_and_survives_its_own_death(
    store_url: str,
) -> None:
    """The replicas write events from a child process (off their GIL): the same batches,
    refused rows set aside by name, and a child killed mid-life costs one failed flush,
    after which a new child writes everything that was queued, once."""
    store = EventStore(store_url)
    bad = poison(store.engine.dialect.name)
    writer = ProcessWriter(store_url)
    buffer = EventBuffer(lambda: store, interval_s=0.01, batch_size=50, writer=writer)

    async def scenario() -> tuple[int, int]:
        buffer.start()
        tickets = [buffer.add_prediction(prediction(f"a{i}")) for i in range(20)]
        refused = [buffer.add_prediction(event) for event in bad]
        assert all(await asyncio.gather(*(buffer.stored(t, 60) for t in tickets)))
        assert not any(await asyncio.gather(*(buffer.stored(t, 60) for t in refused)))
        first = writer.pid
        os.kill(first, signal.SIGKILL)
        tickets = [buffer.add_prediction(prediction(f"b{i}")) for i in range(20)]
        assert all(await asyncio.gather(*(buffer.stored(t, 60) for t in tickets)))
        await buffer.close()
        return first, writer.pid

    first, second = asyncio.run(scenario())
    writer.close()
    assert second != first  # a new child took over
    assert buffer.refused == len(bad) and buffer.failed_flushes >= 1
    assert count_rows(store) == 40
    store.dispose()
