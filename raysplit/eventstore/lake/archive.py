"""Raw events from the database to the Parquet lake, and the database's retention window.

The experiment report reads the rollups (``raysplit_cells``, ``_units``, ``_pairs``,
``_allocations``) and a bounded sample of recent rows; only retraining and analysis need
every raw row, and those read the lake (:mod:`raysplit.eventstore.lake.files`). So raw rows can
leave the database once archived, while the rollups, which every write keeps current,
stay: the report of a pruned experiment is unchanged (docs/event_lake.md).

Both jobs work in bounded pieces, so memory stays flat and no transaction holds locks for
long: export reads ``chunk_rows`` rows at a time in key order, prune deletes
``batch_rows`` per transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.labelled import error_reason, open_store, redact_url
from raysplit.eventstore.lake.files import Kind, Lake, open_lake, rows_to_table, write_table
from raysplit.eventstore.partitions import DAY_S, partition_days
from raysplit.eventstore.schema import (
    BEGIN_OPTION,
    feedback,
    prediction_keys,
    predictions,
    scoring_table,
)
from raysplit.eventstore.store import EventStore

EXPORT_CHUNK_ROWS = 50_000
DELETE_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class ExportCounts:
    """Rows copied to the lake (a repeat of an earlier export included) and files made."""

    predictions: int = 0
    feedback: int = 0
    files: int = 0

    def __add__(self, other: ExportCounts) -> ExportCounts:
        return ExportCounts(
            self.predictions + other.predictions,
            self.feedback + other.feedback,
            self.files + other.files,
        )


@dataclass(frozen=True)
class PruneCounts:
    """What a prune archived (None without a lake) and deleted, before ``cutoff``."""

    cutoff: float
    archived: ExportCounts | None
    predictions: int
    feedback: int
    batches: int  # delete transactions that removed rows
    partitions: int = 0  # PostgreSQL day partitions of predictions dropped whole


@contextmanager
def store_engine(store: str | Engine) -> Iterator[Engine]:
    """An engine on the store: the caller's, or opened (and migrated) as serving opens it,
    after the same checks the retrain's reader makes (a missing SQLite file is refused,
    not created)."""
    if isinstance(store, Engine):
        yield store
        return
    open_store(store).dispose()
    try:
        events = EventStore(store)
    except sa.exc.DBAPIError as exc:
        reason = error_reason(exc, make_url(store))
        raise RaysplitError(f"event store {redact_url(store)} is unreachable: {reason}") from exc
    try:
        yield events.engine
    except sa.exc.DBAPIError as exc:
        reason = error_reason(exc, events.engine.url)
        raise RaysplitError(f"event store {redact_url(store)} failed: {reason}") from exc
    finally:
        events.dispose()


def _columns(table: sa.Table) -> list[Any]:
    """The table's columns as the lake stores them: JSON as the text the database holds,
    so export neither decodes nor re-encodes it."""
    return [
        sa.cast(c, sa.Text).label(c.name) if isinstance(c.type, sa.JSON) else c
        for c in table.columns
        if c.name != "id"
    ]


def _window(column: sa.Column, since: float | None, until: float) -> sa.ColumnElement[bool]:
    parts = [column < until]
    if since is not None:
        parts.append(column >= since)
    return sa.and_(*parts)


def _write(lake: Lake, kind: Kind, rows: list[Any]) -> int:
    if not rows:
        return 0
    return len(write_table(lake, kind, rows_to_table(kind, rows, json_encoded=True)))


def _export_predictions(
    engine: Engine, lake: Lake, since: float | None, until: float, chunk_rows: int
) -> tuple[ExportCounts, int | None]:
    """Predictions in the window by id, each chunk with its labels that fall outside the
    window (a label a few seconds after a prediction just before ``until``), so an
    exported prediction keeps its label however the windows are cut. Returns the counts
    and the last id exported."""
    p, f = predictions, feedback
    in_window = _window(p.c.created_at, since, until)
    counts, after = ExportCounts(), None
    while True:
        query = sa.select(p.c.id, *_columns(p)).where(in_window).order_by(p.c.id).limit(chunk_rows)
        if after is not None:
            query = query.where(p.c.id > after)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return counts, after
            chunk = [in_window, p.c.id <= rows[-1].id]
            if after is not None:
                chunk.append(p.c.id > after)
            labels = conn.execute(
                sa.select(*_columns(f)).where(
                    f.c.request_id.in_(sa.select(p.c.request_id).where(*chunk)),
                    sa.not_(_window(f.c.created_at, since, until)),
                )
            ).all()
        files = _write(lake, "predictions", rows) + _write(lake, "feedback", labels)
        counts += ExportCounts(len(rows), len(labels), files)
        after = rows[-1].id


def _export_feedback(
    engine: Engine, lake: Lake, since: float | None, until: float, chunk_rows: int
) -> ExportCounts:
    """Feedback in the window, keyed by (created_at, request_id): its time index."""
    f = feedback
    counts, last = ExportCounts(), None
    while True:
        query = (
            sa.select(*_columns(f))
            .where(_window(f.c.created_at, since, until))
            .order_by(f.c.created_at, f.c.request_id)
            .limit(chunk_rows)
        )
        if last is not None:
            query = query.where(sa.tuple_(f.c.created_at, f.c.request_id) > sa.tuple_(*last))
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return counts
        counts += ExportCounts(0, len(rows), _write(lake, "feedback", rows))
        last = (rows[-1].created_at, rows[-1].request_id)


def _export(
    engine: Engine, lake: Lake, since: float | None, until: float, chunk_rows: int
) -> tuple[ExportCounts, int | None]:
    counts, last_id = _export_predictions(engine, lake, since, until, chunk_rows)
    return counts + _export_feedback(engine, lake, since, until, chunk_rows), last_id


def export(
    store: str | Engine,
    lake_uri: str | Lake,
    since: float | None,
    until: float,
    *,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> ExportCounts:
    """Copy the predictions and feedback with ``since <= created_at < until`` (``since``
    None: from the first) to the lake, ``chunk_rows`` at a time.

    Each exported prediction takes its label along even when the label's own time is
    outside the window. Exporting a window again writes its rows again; readers keep one
    copy. Refuses (RaysplitError, one line) an empty window, a store or lake that cannot
    be opened."""
    if since is not None and since >= until:
        raise RaysplitError("the export window is empty: since is not before until")
    lake = open_lake(lake_uri)
    with store_engine(store) as engine:
        return _export(engine, lake, since, until, chunk_rows)[0]


@contextmanager
def write_transaction(engine: Engine) -> Iterator[sa.Connection]:
    """SQLite takes its write lock at BEGIN, as the store's writers do: a reader that
    upgrades to a writer midway can fail at once instead of waiting."""
    options = {BEGIN_OPTION: "BEGIN IMMEDIATE"}
    with engine.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def _delete_predictions(
    engine: Engine, cutoff: float, last_id: int | None, batch_rows: int
) -> tuple[int, int]:
    """Delete predictions before ``cutoff`` (up to ``last_id``, the last one archived,
    when there is a lake) in id order, ``batch_rows`` per transaction."""
    p = predictions
    deleted = batches = 0
    after = None
    while True:
        where = [p.c.created_at < cutoff]
        if last_id is not None:
            where.append(p.c.id <= last_id)
        if after is not None:
            where.append(p.c.id > after)
        with write_transaction(engine) as conn:
            upper = conn.execute(
                sa.select(p.c.id).where(*where).order_by(p.c.id).offset(batch_rows - 1).limit(1)
            ).scalar()
            bounded = where if upper is None else [*where, p.c.id <= upper]
            count = conn.execute(sa.delete(p).where(*bounded)).rowcount
        deleted, batches = deleted + count, batches + (count > 0)
        if upper is None:
            return deleted, batches
        after = upper


def _delete_feedback(engine: Engine, cutoff: float, batch_rows: int) -> tuple[int, int]:
    """Delete feedback before ``cutoff`` whose prediction has left the database, by
    (created_at, request_id), ``batch_rows`` candidates per transaction. A label whose
    prediction is still stored stays with it (the retrain's reader joins them in the
    database), and goes when a later prune takes the prediction."""
    f, p = feedback, scoring_table(engine.dialect.name)
    orphan = ~sa.exists().where(p.c.request_id == f.c.request_id)
    return _delete_by_time(engine, (f.c.created_at, f.c.request_id), cutoff, batch_rows, orphan)


def _delete_by_time(
    engine: Engine,
    key: tuple[sa.Column, ...],
    cutoff: float,
    batch_rows: int,
    condition: sa.ColumnElement[bool],
) -> tuple[int, int]:
    """Delete rows of ``key``'s table (``created_at`` first) before ``cutoff`` that meet
    ``condition``, walking ``key`` ``batch_rows`` candidates per transaction; returns the
    rows deleted and the transactions that deleted any."""
    table, ordered = key[0].table, sa.tuple_(*key)
    deleted = batches = 0
    last = None
    while True:
        where = [key[0] < cutoff]
        if last is not None:
            where.append(ordered > sa.tuple_(*last))
        with write_transaction(engine) as conn:
            upper = conn.execute(
                sa.select(*key).where(*where).order_by(*key).offset(batch_rows - 1).limit(1)
            ).first()
            bounded = where if upper is None else [*where, ordered <= sa.tuple_(*upper)]
            count = conn.execute(sa.delete(table).where(*bounded, condition)).rowcount
        deleted, batches = deleted + count, batches + (count > 0)
        if upper is None:
            return deleted, batches
        last = tuple(upper)


def _drop(engine: Engine, table: sa.Table, name: str) -> None:
    """Detach a partition without blocking the table's readers and writers, then drop it."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table.name} DETACH PARTITION {name} CONCURRENTLY")
        conn.exec_driver_sql(f"DROP TABLE {name}")


def _drop_old_days(
    engine: Engine, cutoff: float, archived: bool, last_id: int | None
) -> tuple[int, int]:
    """Drop the day partitions of predictions wholly before ``cutoff`` (PostgreSQL) whose
    every row was archived (ids up to ``last_id``; ``archived`` False: no lake, nothing to
    wait for). Returns the rows and partitions dropped; what stays goes through the
    batched deletes."""
    with engine.connect() as conn:
        days = partition_days(conn, predictions)
    dropped = partitions = 0
    for day, name in sorted(days.items()):
        if (day + 1) * DAY_S > cutoff:
            break
        with engine.connect() as conn:
            rows, top = conn.exec_driver_sql(f"SELECT count(*), max(id) FROM {name}").one()
        if archived and rows and (last_id is None or top > last_id):
            continue  # written after the export began: the next prune takes it
        _drop(engine, predictions, name)
        dropped, partitions = dropped + rows, partitions + 1
    return dropped, partitions


def _delete_keys(engine: Engine, cutoff: float, batch_rows: int) -> None:
    """Delete the keys (PostgreSQL's ``raysplit_prediction_keys``) before ``cutoff`` whose
    raw row has left the database, ``batch_rows`` candidates per transaction."""
    k, p = prediction_keys, predictions
    gone = ~sa.exists().where(
        p.c.request_id == k.c.request_id,
        p.c.variant == k.c.variant,
        p.c.created_at == k.c.created_at,  # one day's partition, not all of them
    )
    _delete_by_time(engine, (k.c.created_at, k.c.request_id, k.c.variant), cutoff, batch_rows, gone)


def prune(
    store: str | Engine,
    lake_uri: str | Lake | None,
    older_than_s: float,
    *,
    now: float | None = None,
    batch_rows: int = DELETE_BATCH_ROWS,
    chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> PruneCounts:
    """Archive every prediction and feedback older than ``older_than_s`` to the lake,
    then delete them from the database: on PostgreSQL whole days of predictions at once
    (their partitions are dropped: :mod:`raysplit.eventstore.partitions`), and the rest in
    batches.
    ``lake_uri`` None deletes without archiving. The rollup tables are never touched, so
    the report is unchanged.

    Only what was archived is deleted: a prediction written after the export began (a
    writer's backlog) waits for the next prune."""
    if older_than_s <= 0:
        raise RaysplitError("prune: the age must be positive (e.g. 30d)")
    if batch_rows < 1:
        raise RaysplitError("prune: batch_rows must be at least 1")
    cutoff = (time.time() if now is None else now) - older_than_s
    lake = None if lake_uri is None else open_lake(lake_uri)
    with store_engine(store) as engine:
        archived, last_id = None, None
        if lake is not None:
            archived, last_id = _export(engine, lake, None, cutoff, chunk_rows)
        postgresql = engine.dialect.name == "postgresql"
        whole, partitions = 0, 0
        if postgresql:
            whole, partitions = _drop_old_days(engine, cutoff, lake is not None, last_id)
        if lake is not None and last_id is None:
            deleted_predictions, prediction_batches = 0, 0  # nothing was archived
        else:
            deleted_predictions, prediction_batches = _delete_predictions(
                engine, cutoff, last_id, batch_rows
            )
        if postgresql:
            _delete_keys(engine, cutoff, batch_rows)
        deleted_feedback, feedback_batches = _delete_feedback(engine, cutoff, batch_rows)
    return PruneCounts(
        cutoff=cutoff,
        archived=archived,
        predictions=whole + deleted_predictions,
        feedback=deleted_feedback,
        batches=prediction_batches + feedback_batches,
        partitions=partitions,
    )
