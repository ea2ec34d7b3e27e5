"""Migrations: bring an older event store up to this raysplit's schema, once, however many
replicas start together, and fill what older rows lack (the v4 rollups and scored columns).

The tables themselves are in :mod:`raysplit.eventstore.schema`.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from raysplit.core.events import scored_prediction
from raysplit.eventstore.partitions import (
    create_partitioned,
    is_partitioned,
    partition_existing,
)
from raysplit.eventstore.schema import (
    BEGIN_OPTION,
    BUCKET_S,
    CELL_COUNTERS,
    SCHEMA_VERSION,
    SchemaError,
    cells,
    feedback,
    metadata,
    pairs,
    prediction_keys,
    predictions,
    schema_info,
    units,
)

_SQL_TYPES = {sa.Integer: "INTEGER", sa.Float: "FLOAT"}

# Each step takes the schema from version N-1 to N, in one transaction with the version bump.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE raysplit_predictions ADD COLUMN outcome VARCHAR(16) NOT NULL DEFAULT 'ok'",
        "ALTER TABLE raysplit_predictions ADD COLUMN error VARCHAR(512)",
    ],
    3: [],  # the lease table is new: create_all above adds it
    4: [  # older rows count as epoch 0 ("" allocation) and as split traffic
        "ALTER TABLE raysplit_predictions ADD COLUMN assignment VARCHAR(8) NOT NULL"
        " DEFAULT 'split'",
        "ALTER TABLE raysplit_predictions ADD COLUMN allocation VARCHAR(32) NOT NULL DEFAULT ''",
        "ALTER TABLE raysplit_predictions ADD COLUMN unit_hash VARCHAR(32)",
        "ALTER TABLE raysplit_predictions ADD COLUMN predicted VARCHAR(256)",
        "ALTER TABLE raysplit_predictions ADD COLUMN predicted_value FLOAT",
        "ALTER TABLE raysplit_feedback ADD COLUMN label_text VARCHAR(256)",
        "CREATE INDEX IF NOT EXISTS ix_predictions_experiment_shadow"
        " ON raysplit_predictions (experiment, shadow)",
        "CREATE INDEX IF NOT EXISTS ix_feedback_created ON raysplit_feedback (created_at)",
        "CREATE INDEX IF NOT EXISTS ix_predictions_experiment_variant"
        " ON raysplit_predictions (experiment, variant, id)",
    ],
    5: [],  # the rollout tables are new: create_all above adds them
    6: [],  # the accepted-config and key-use tables are new: create_all above adds them
    # leases are renamed for what they hold (report and rollout jobs); create_all above adds
    # raysplit_leases, and a lease lasts seconds, so the old one is dropped, not copied
    7: ["DROP TABLE IF EXISTS raysplit_report_lease"],
    # each sticky unit's own counts and sums, recomputed from the rows after the columns
    8: [
        f"ALTER TABLE raysplit_units ADD COLUMN {name} {_SQL_TYPES[kind]} NOT NULL DEFAULT 0"
        for name, kind in CELL_COUNTERS.items()
    ],
    # feedback's covariate and the rollups' sums of it (rows before v9 have none: zeros)
    9: [
        "ALTER TABLE raysplit_feedback ADD COLUMN covariate FLOAT",
        *(
            f"ALTER TABLE {table} ADD COLUMN {name} {_SQL_TYPES[CELL_COUNTERS[name]]}"
            " NOT NULL DEFAULT 0"
            for table in ("raysplit_cells", "raysplit_units")
            for name in ("cov_n", "cov_sum", "cov_sq", "cov_y")
        ),
    ],
    # PostgreSQL only: predictions partitioned by day, their keys beside them (create_all
    # above adds raysplit_prediction_keys), in Python below
    10: [],
    # the report's per-user moments join users to themselves: quadratic without it
    11: ["CREATE INDEX IF NOT EXISTS ix_units_user ON raysplit_units (experiment, unit_hash)"],
    12: [],  # the experiment archive table is new: create_all above adds it
}

# Python steps after a version's statements: fill the new columns of older rows.
BACKFILL_CHUNK = 5000


def _migration_lock(conn: sa.Connection) -> None:
    """Hold the schema against other replicas until this transaction ends.

    Replicas that start together on an older database would otherwise each read the old
    version and run the same ``ALTER TABLE``; all but one then fail. PostgreSQL takes a
    transaction-scoped advisory lock; SQLite's ``BEGIN IMMEDIATE`` (see :func:`make_engine`)
    took the database's write lock when the transaction began.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})


# A fixed key of raysplit's own in PostgreSQL's advisory-lock space ("raysplit" in ASCII).
_MIGRATION_LOCK = 0x7261797370_6C6974


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema, once even when many replicas start together; return
    its version."""
    with (
        engine.connect().execution_options(**{BEGIN_OPTION: "BEGIN IMMEDIATE"}) as conn,
        conn.begin(),
    ):
        _migration_lock(conn)
        fresh = not sa.inspect(conn).has_table(schema_info.name)
        _create_missing_tables(conn)
        found = conn.execute(sa.select(schema_info.c.version)).scalar()
        if found is None or fresh:
            conn.execute(schema_info.insert().values(version=SCHEMA_VERSION))
            return SCHEMA_VERSION
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"event store schema v{found} is newer than this raysplit (v{SCHEMA_VERSION})"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version]:
                if not _adds_existing_column(conn, statement):
                    conn.execute(sa.text(statement))
        # the rows' recounts last, once every column they read exists
        if found < 4:
            _backfill_scored_columns(conn)
            backfill_rollup(conn)
        elif found < 8:  # a v4-v7 store's units hold no counts yet
            conn.execute(units.delete())
            conn.execute(units.insert().from_select(UNIT_COLUMNS, units_from_rows()))
        if conn.dialect.name == "postgresql" and not is_partitioned(conn, predictions):
            partition_existing(conn, predictions)  # v10: day partitions (partitions.py)
        conn.execute(schema_info.update().values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION


def _create_missing_tables(conn: sa.Connection) -> None:
    """Every table the store lacks; on PostgreSQL raw predictions partitioned by day, with
    their keys beside them (SQLite reads its keys from the predictions themselves)."""
    if conn.dialect.name != "postgresql":
        tables = [t for t in metadata.sorted_tables if t is not prediction_keys]
        metadata.create_all(conn, tables=tables, checkfirst=True)
        return
    fresh = not sa.inspect(conn).has_table(predictions.name)
    tables = [t for t in metadata.sorted_tables if t is not predictions]
    metadata.create_all(conn, tables=tables, checkfirst=True)
    if fresh:
        create_partitioned(conn, predictions)


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)")


def _adds_existing_column(conn: sa.Connection, statement: str) -> bool:
    """A table created whole by ``create_all`` above already has the column a step adds."""
    match = _ADD_COLUMN.match(statement)
    if match is None:
        return False
    table, column = match.groups()
    return column in {c["name"] for c in sa.inspect(conn).get_columns(table)}


CELL_COLUMNS = [c.name for c in cells.columns]


def backfill_rollup(conn: sa.Connection) -> None:
    """The rollups (cells, sticky units, shadow pairs) of every row written before v4, in
    aggregate queries."""
    conn.execute(cells.insert().from_select(CELL_COLUMNS, cells_from_rows()))
    conn.execute(units.insert().from_select(UNIT_COLUMNS, units_from_rows()))
    conn.execute(pairs.insert().from_select(PAIR_COLUMNS, pairs_from_rows()))


PAIR_COLUMNS = [c.name for c in pairs.columns]


def pairs_from_rows() -> sa.Select:
    """``raysplit_pairs`` from every stored row: each shadow joined with the live answer
    to the same request and its label."""
    s, live, f = predictions.alias("s"), predictions.alias("l"), feedback

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    labelled = f.c.label_text.is_not(None)
    live_right, shadow_right = live.c.predicted == f.c.label_text, s.c.predicted == f.c.label_text
    valued = sa.and_(
        f.c.label_text.is_(None),
        f.c.value.is_not(None),
        live.c.predicted_value.is_not(None),
        s.c.predicted_value.is_not(None),
    )
    diff = sa.func.abs(s.c.predicted_value - f.c.value) - sa.func.abs(
        live.c.predicted_value - f.c.value
    )
    bucket = sa.cast(sa.func.floor(live.c.created_at / BUCKET_S), sa.Integer)
    return (
        sa.select(
            s.c.experiment,
            s.c.variant,
            live.c.allocation,
            bucket,
            sa.func.count(),
            count(s.c.predicted == live.c.predicted),
            count(labelled),
            count(sa.and_(labelled, live_right, shadow_right)),
            count(sa.and_(labelled, live_right, sa.not_(shadow_right))),
            count(sa.and_(labelled, sa.not_(live_right), shadow_right)),
            count(sa.and_(labelled, sa.not_(live_right), sa.not_(shadow_right))),
            count(valued),
            sa.func.sum(sa.case((valued, diff), else_=0.0)),
            sa.func.sum(sa.case((valued, diff * diff), else_=0.0)),
        )
        .select_from(
            s.join(
                live,
                sa.and_(
                    live.c.request_id == s.c.request_id,
                    live.c.shadow.is_(False),
                    live.c.outcome == "ok",
                    live.c.predicted.is_not(None),
                    live.c.assignment.in_(["split", "sticky"]),  # forced: never compared
                ),
            ).outerjoin(f, f.c.request_id == s.c.request_id)
        )
        .where(s.c.shadow.is_(True), s.c.outcome == "ok", s.c.predicted.is_not(None))
        .group_by(s.c.experiment, s.c.variant, live.c.allocation, bucket)
    )


UNIT_COLUMNS = [c.name for c in units.columns]


def units_from_rows() -> sa.Select:
    """``raysplit_units`` from every stored row: each sticky unit's counts and sums."""
    p = predictions
    keys = (p.c.experiment, p.c.allocation, p.c.variant, p.c.unit_hash)
    return _counted_from_rows(keys).where(p.c.assignment == "sticky", p.c.unit_hash.is_not(None))


def cells_from_rows() -> sa.Select:
    """``raysplit_cells`` computed from every stored row: what the rollup must equal."""
    p = predictions
    bucket = sa.cast(sa.func.floor(p.c.created_at / BUCKET_S), sa.Integer)
    version = sa.func.coalesce(p.c.model_version, "")
    return _counted_from_rows(
        (p.c.experiment, p.c.variant, p.c.allocation, p.c.assignment, version, bucket)
    )


def _counted_from_rows(keys: tuple[sa.ColumnElement, ...]) -> sa.Select:
    """The rollup counters (:data:`CELL_COUNTERS`) of every stored row, grouped by ``keys``."""
    p, f = predictions, feedback
    ok = p.c.outcome == "ok"
    latency = sa.case((p.c.latency_ms > 0.001, p.c.latency_ms), else_=0.001)
    log_latency = sa.func.ln(latency)
    by_label = sa.and_(p.c.predicted.is_not(None), f.c.label_text.is_not(None))
    by_value = sa.and_(p.c.predicted_value.is_not(None), f.c.value.is_not(None))
    scored = sa.and_(ok, sa.or_(by_label, by_value))
    abs_error = sa.func.abs(p.c.predicted_value - f.c.value)
    covaried = sa.and_(scored, f.c.covariate.is_not(None))
    correct = sa.case((p.c.predicted == f.c.label_text, 1.0), else_=0.0)
    outcome = sa.case((by_label, correct), else_=abs_error)

    def count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    def total(condition: sa.ColumnElement[bool], value: sa.ColumnElement) -> sa.ColumnElement:
        return sa.func.sum(sa.case((condition, value), else_=0.0))

    return (
        sa.select(
            *keys,
            sa.func.count(),
            count(p.c.outcome == "error"),
            total(ok, log_latency),
            total(ok, log_latency * log_latency),
            count(scored),
            count(sa.and_(ok, by_label, p.c.predicted == f.c.label_text)),
            total(sa.and_(ok, by_value), abs_error),
            total(sa.and_(ok, by_value), abs_error * abs_error),
            count(covaried),
            total(covaried, f.c.covariate),
            total(covaried, f.c.covariate * f.c.covariate),
            total(covaried, f.c.covariate * outcome),
        )
        .select_from(p.outerjoin(f, f.c.request_id == p.c.request_id))
        .group_by(*keys)
    )


def _backfill_scored_columns(conn: sa.Connection) -> None:
    """Give rows written before v4 the columns the report compares in SQL, in chunks."""
    last = 0
    while True:
        chunk = conn.execute(
            sa.select(predictions.c.id, predictions.c.predictions)
            .where(predictions.c.id > last)
            .order_by(predictions.c.id)
            .limit(BACKFILL_CHUNK)
        ).all()
        if not chunk:
            break
        last = chunk[-1].id
        updates = []
        for row in chunk:
            predicted, value = scored_prediction(row.predictions)
            if predicted is not None:
                updates.append({"row_id": row.id, "p": predicted, "v": value})
        if updates:
            conn.execute(
                predictions.update()
                .where(predictions.c.id == sa.bindparam("row_id"))
                .values(predicted=sa.bindparam("p"), predicted_value=sa.bindparam("v")),
                updates,
            )
    labels = conn.execute(
        sa.select(feedback.c.request_id, feedback.c.label).where(feedback.c.label.is_not(None))
    ).all()
    if labels:
        conn.execute(
            feedback.update()
            .where(feedback.c.request_id == sa.bindparam("rid"))
            .values(label_text=sa.bindparam("text")),
            [{"rid": r.request_id, "text": str(r.label)} for r in labels],
        )
