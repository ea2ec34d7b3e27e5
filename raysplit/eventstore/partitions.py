"""PostgreSQL keeps raw predictions in one partition per UTC day.

Why: raw predictions (inputs, outputs, probabilities as JSON) are what grows with traffic
(the rollups grow with minutes and users, feedback rows are a few numbers), and deleting
old rows row by row costs as much as writing them, bloats the table and holds locks while
it runs. A day's partition leaves in one ``DETACH ... CONCURRENTLY`` and ``DROP`` once the
lake holds it (:mod:`raysplit.eventstore.lake.archive`), and readers and writers never
wait for it.

The price: PostgreSQL's unique keys on a partitioned table must include the partition key,
so ``(request_id, variant)`` cannot be unique across days, and a lookup by request id
visits every day's index. Measured with 33 day partitions: one write's read of its 256
requests' stored rows (predictions joined with feedback) took 56 ms to plan and 31 ms to
run, and ingest fell from about 20,000 to 2,125 events/s. So the key and the columns
scoring reads go to one unpartitioned table first (``raysplit_prediction_keys``,
:data:`raysplit.eventstore.schema.prediction_keys`): its primary key decides which rows are
new, and every read by request id uses it; the raw row is then copied into its day.
Feedback stays one unpartitioned table: its rows are small, and a label is looked up by
request id on every write.

SQLite is one file on one machine and has no partitions: it keeps its unique keys and
prunes in batches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from raysplit.eventstore.schema import SCORED_COLUMNS, prediction_keys, predictions

DAY_S = 86_400
ID_SEQUENCE = "raysplit_predictions_ids"  # predictions' ids, unique without a unique key
# the indexes the unpartitioned table's unique keys gave it, as plain ones
LOOKUP_INDEXES = (
    ("ix_predictions_request", "request_id, variant, created_at"),  # one row, in its day
    ("ix_predictions_id", "id"),  # export and prune walk rows in id order
)
# The advisory-lock key partition DDL is serialised by ("part" in ASCII)
PARTITION_LOCK = 0x70617274


def day_of(created_at: float) -> int:
    """The UTC day (days since 1970-01-01) a row with this ``created_at`` belongs to."""
    return int(created_at // DAY_S)


def partition_name(table: sa.Table, day: int) -> str:
    date = dt.datetime.fromtimestamp(day * DAY_S, dt.UTC)
    return f"{table.name}_d{date:%Y%m%d}"


def is_partitioned(conn: sa.Connection, table: sa.Table) -> bool:
    kind = conn.exec_driver_sql(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass(%(name)s)", {"name": table.name}
    ).scalar()
    return kind == "p"


def partition_days(conn: sa.Connection, table: sa.Table) -> dict[int, str]:
    """The days ``table`` has a partition for -> that partition's name."""
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%(name)s)",
        {"name": table.name},
    ).scalars()
    prefix = f"{table.name}_d"
    days = {}
    for name in rows:
        if name.startswith(prefix):
            date = dt.datetime.strptime(name[len(prefix) :], "%Y%m%d").replace(tzinfo=dt.UTC)
            days[day_of(date.timestamp())] = name
    return days


def create_partitioned(conn: sa.Connection, table: sa.Table, *, indexes: bool = True) -> None:
    """``table`` as a parent partitioned by day on ``created_at``: its columns as the
    schema declares them, no unique keys (see the module docstring), ids from a sequence."""
    columns = []
    for column in table.columns:
        if column.name == "id":
            columns.append(f"id INTEGER NOT NULL DEFAULT nextval('{ID_SEQUENCE}')")
        else:
            columns.append(str(sa.schema.CreateColumn(column).compile(dialect=conn.dialect)))
    if "id" in table.c:
        conn.exec_driver_sql(f"CREATE SEQUENCE IF NOT EXISTS {ID_SEQUENCE}")
    conn.exec_driver_sql(
        f"CREATE TABLE {table.name} ({', '.join(columns)}) PARTITION BY RANGE (created_at)"
    )
    if indexes:
        create_indexes(conn, table)


def create_indexes(conn: sa.Connection, table: sa.Table) -> None:
    """The schema's indexes and the lookups its unique keys used to serve, on the parent
    (PostgreSQL builds them on every partition, present and future)."""
    for index in table.indexes:
        conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
    for name, columns in LOOKUP_INDEXES:
        conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON {table.name} ({columns})")


def add_days(conn: sa.Connection, table: sa.Table, days: Iterable[int]) -> None:
    """Make sure ``table`` has a partition for each of ``days``. Serialised by an advisory
    lock held to the end of the caller's transaction, so writers that meet a new day at
    once create it once."""
    days = sorted(set(days))
    if not days:
        return
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": PARTITION_LOCK})
    for day in days:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {partition_name(table, day)} PARTITION OF {table.name}"
            f" FOR VALUES FROM ({day * DAY_S}) TO ({(day + 1) * DAY_S})"
        )


def partition_existing(conn: sa.Connection, table: sa.Table) -> None:
    """Turn a store's unpartitioned ``table`` (schema v9 and before) into a partitioned one
    holding the same rows, ids kept, in the caller's transaction."""
    old = f"{table.name}_unpartitioned"
    conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
    create_partitioned(conn, table, indexes=False)
    days = conn.exec_driver_sql(
        f"SELECT DISTINCT floor(created_at / {DAY_S})::bigint FROM {old}"
    ).scalars()
    add_days(conn, table, [int(d) for d in days])
    names = ", ".join(c.name for c in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {old}")
    if "id" in table.c:
        conn.exec_driver_sql(
            f"SELECT setval('{ID_SEQUENCE}', coalesce(max(id), 0) + 1, false) FROM {old}"
        )
    conn.exec_driver_sql(f"DROP TABLE {old}")
    create_indexes(conn, table)
    fill_keys(conn)


def fill_keys(conn: sa.Connection) -> None:
    """The keys of raw predictions inserted without them (a converted store, a bulk load)."""
    scored = ", ".join(SCORED_COLUMNS)
    conn.exec_driver_sql(
        f"INSERT INTO {prediction_keys.name} ({scored}) SELECT {scored} FROM {predictions.name}"
        " ON CONFLICT DO NOTHING"
    )


class DayPartitions:
    """Which days a process knows have a partition, so a write checks a set and touches
    the catalogue only on a day it has not seen (once a day, or after a prune dropped
    one: :meth:`forget`)."""

    AHEAD_DAYS = 2  # made with a new day, so midnight's writers find theirs ready

    def __init__(self, engine: Engine):
        self.engine = engine
        self.known: set[int] = set()

    def ensure(self, created_at: Iterable[float]) -> None:
        """Partitions for the days of these ``created_at`` values (and the next days)."""
        missing = {day_of(t) for t in created_at} - self.known
        if not missing:
            return
        wanted = {d + ahead for d in missing for ahead in range(self.AHEAD_DAYS + 1)}
        with self.engine.begin() as conn:
            present = set(partition_days(conn, predictions))
            if wanted - present:
                add_days(conn, predictions, wanted - present)
        self.known |= wanted

    def forget(self) -> None:
        """A write met a day whose partition is gone (a prune dropped it): look again."""
        self.known.clear()
