"""Inserting a batch of event rows, each stored once, in as few round trips as the back end
allows.

SQLAlchemy's insert of many rows with ``RETURNING`` (which the store needs: it must know
which rows are new to count them once) sends one ``VALUES`` list with a placeholder per
value, and psycopg parses that text anew on every write: at a batch of 256 predictions it
cost 12 ms of the writer's CPU, more than the database spent storing the rows. On
PostgreSQL the rows are therefore copied (``COPY``, one stream, values encoded once) into
a temporary table and moved with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING
RETURNING``; SQLite fills its temporary table with one ``executemany`` (SQLAlchemy's
per-row parameter processing was a quarter of a SQLite writer's time). Rows known to be new
(a partitioned table's, once their keys went in) are copied straight in.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import sqlalchemy as sa

from raysplit.eventstore.dialect import insert


def _encoded(
    table: sa.Table, columns: list[str], rows: Sequence[dict[str, Any]]
) -> Iterator[list[Any]]:
    """Each row's values in ``columns`` order, JSON columns as JSON text: a value at a time
    through a function was a fifth of a SQLite writer's time."""
    values_of = operator.itemgetter(*columns)
    json = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, sa.JSON)]
    dumps = orjson.dumps
    for row in rows:
        values = list(values_of(row))
        for i in json:
            if values[i] is not None:
                values[i] = dumps(values[i]).decode()
        yield values


def insert_new(
    conn: sa.Connection,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    key: Sequence[str],
) -> list[tuple[Any, ...]]:
    """Insert ``rows`` (dicts of ``table``'s columns, all with the same keys), skipping any
    that conflict with a stored one, and return the ``key`` columns of those inserted."""
    if not rows:
        return []
    columns = list(rows[0])
    encoded = _encoded(table, columns, rows)
    stage = _stage(conn, table, columns)
    names = ", ".join(columns)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for values in encoded:
                    copy.write_row(values)
        else:  # SQLite, in process: one prepared statement run for every row, in C
            marks = ", ".join("?" * len(columns))
            cursor.executemany(f"INSERT INTO {stage} ({names}) VALUES ({marks})", encoded)
        cursor.execute(  # SQLite reads ON CONFLICT after a bare SELECT as a join's: WHERE
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {stage} WHERE 1 = 1"
            f" ON CONFLICT DO NOTHING RETURNING {', '.join(key)}"
        )
        inserted = [tuple(r) for r in cursor.fetchall()]
        if conn.dialect.name != "postgresql":  # PostgreSQL empties it at commit
            cursor.execute(f"DELETE FROM {stage}")
        return inserted
    finally:
        cursor.close()


def copy_rows(conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """``COPY`` rows the caller knows are new (PostgreSQL) straight into ``table``: a
    partitioned table routes each to its partition."""
    if not rows:
        return
    columns = list(rows[0])
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for values in _encoded(table, columns, rows):
                copy.write_row(values)
    finally:
        cursor.close()


def add_counts(
    conn: sa.Connection, table: sa.Table, rows: Sequence[dict[str, Any]], counters: Sequence[str]
) -> None:
    """Add each row's ``counters`` to the stored row with its primary key (inserting it when
    there is none): a rollup's commutative deltas. ``rows`` hold distinct keys, in key
    order, so concurrent writers lock the rows they share in one order and never deadlock.

    PostgreSQL: one ``COPY`` and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``; as
    one prepared statement per row the per-user rollup alone took 13-30 us an event.
    """
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(adding_upsert(conn.dialect.name, table, tuple(counters)), list(rows))
        return
    columns = list(rows[0])
    stage = _stage(conn, table, columns)
    names = ", ".join(columns)
    keys = ", ".join(c.name for c in table.primary_key)
    adds = ", ".join(f"{c} = {table.name}.{c} + excluded.{c}" for c in counters)
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[name] for name in columns])
        cursor.execute(
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {stage} ORDER BY {keys}"
            f" ON CONFLICT ({keys}) DO UPDATE SET {adds}"
        )
    finally:
        cursor.close()


@functools.cache
def adding_upsert(dialect: str, table: sa.Table, counters: tuple[str, ...]) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE`` adding each counter to the stored one.

    Built once per dialect and table: building it (``excluded`` and one expression per
    counter) cost more per write than running it.
    """
    statement = insert(dialect, table)
    return statement.on_conflict_do_update(
        index_elements=[c.name for c in table.primary_key],
        set_={name: table.c[name] + statement.excluded[name] for name in counters},
    )


STAGES = "raysplit_stages"  # the connection's info key: the stage tables it has


def forget_stages_on_rollback(engine: sa.Engine) -> None:
    """A stage table created in a transaction that rolls back (a refused row) is gone with
    it: the connection must create it again."""

    @sa.event.listens_for(engine, "rollback")
    def _forget(conn: sa.Connection) -> None:
        conn.connection.info.pop(STAGES, None)


def _stage(conn: sa.Connection, table: sa.Table, columns: list[str]) -> str:
    """The connection's temporary table for ``table``'s rows, emptied at every commit;
    created once per connection (the pool keeps it with the connection)."""
    stage = f"raysplit_stage_{table.name}"
    made = conn.connection.info.setdefault(STAGES, set())
    if stage not in made:
        names = ", ".join(columns)
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS"
            f" SELECT {names} FROM {table.name} WITH NO DATA"
            if conn.dialect.name == "postgresql"
            else f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} AS"
            f" SELECT {names} FROM {table.name} WHERE 0"
        )
        made.add(stage)
    return stage
