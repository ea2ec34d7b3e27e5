"""Every prediction and piece of feedback as a row in a real database (SQLAlchemy Core).

SQLite in WAL mode under RAYSPLIT_HOME by default, PostgreSQL by URL for clusters. The
schema carries an explicit version so a newer raysplit can migrate an older database and
an older raysplit refuses a newer one instead of corrupting it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from raysplit.core.events import MAX_REQUEST_ID, Event, FeedbackEvent, PredictionEvent

SCHEMA_VERSION = 3

metadata = sa.MetaData()

schema_info = sa.Table(
    "raysplit_schema",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

predictions = sa.Table(
    "raysplit_predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(MAX_REQUEST_ID), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("experiment", sa.String(128), nullable=False),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32)),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("predictions", sa.JSON, nullable=False),
    sa.Column("probabilities", sa.JSON),
    sa.Column("latency_ms", sa.Float, nullable=False),
    # v2: a request assigned to a variant whose model then failed is an "error" event
    sa.Column("outcome", sa.String(16), nullable=False, server_default="ok"),
    sa.Column("error", sa.String(512)),
    sa.UniqueConstraint("request_id", "variant", name="uq_prediction_request_variant"),
    sa.Index("ix_predictions_experiment_created", "experiment", "created_at"),
)

feedback = sa.Table(
    "raysplit_feedback",
    metadata,
    sa.Column("request_id", sa.String(MAX_REQUEST_ID), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("label", sa.JSON),
    sa.Column("value", sa.Float),
)


# v3: which replica refreshes an experiment's report gauges (see EventStore.claim_report)
report_lease = sa.Table(
    "raysplit_report_lease",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


class SchemaError(RuntimeError):
    """The database holds a schema this raysplit cannot use."""


def _json(value: Any) -> str:
    # the standard library's encoder took 90% of event writes for 1000-row predictions
    return orjson.dumps(value).decode()


_BEGIN = "raysplit_sqlite_begin"


def make_engine(url: str) -> Engine:
    """An engine tuned for its back end: SQLite gets WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, json_serializer=_json)

        @sa.event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below), so a transaction can ask for a write
            # lock up front: pysqlite's own deferred BEGIN cannot.
            connection.isolation_level = None
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql(connection.get_execution_options().get(_BEGIN, "BEGIN"))

        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=2, max_overflow=2, json_serializer=_json
    )


# Each step takes the schema from version N-1 to N, in one transaction with the version bump.
MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE raysplit_predictions ADD COLUMN outcome VARCHAR(16) NOT NULL DEFAULT 'ok'",
        "ALTER TABLE raysplit_predictions ADD COLUMN error VARCHAR(512)",
    ],
    3: [],  # the lease table is new: create_all above adds it
}


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
    with engine.connect().execution_options(**{_BEGIN: "BEGIN IMMEDIATE"}) as conn, conn.begin():
        _migration_lock(conn)
        fresh = not sa.inspect(conn).has_table(schema_info.name)
        metadata.create_all(conn, checkfirst=True)
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
                conn.execute(sa.text(statement))
            conn.execute(schema_info.update().values(version=version))
        return SCHEMA_VERSION


def _insert_ignoring_duplicates(engine: Engine, table: sa.Table) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


class EventStore:
    """Batched, idempotent writes and the reads the experiment report needs."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.version = migrate(self.engine)

    def write(self, events: Sequence[Event]) -> set[str]:
        """Write one batch in one transaction; repeats (same request id) are ignored.

        Returns the request ids whose feedback was new: a client that posts the same
        feedback twice (or to two replicas) must be counted once, as the store keeps it.
        """
        prediction_rows = [e.row() for e in events if isinstance(e, PredictionEvent)]
        feedback_rows = [e.row() for e in events if isinstance(e, FeedbackEvent)]
        new_feedback: set[str] = set()
        with self.engine.begin() as conn:
            if prediction_rows:
                conn.execute(_insert_ignoring_duplicates(self.engine, predictions), prediction_rows)
            if feedback_rows:
                inserted = conn.execute(
                    _insert_ignoring_duplicates(self.engine, feedback).returning(
                        feedback.c.request_id
                    ),
                    feedback_rows,
                )
                new_feedback.update(inserted.scalars())
        return new_feedback

    def reachable(self) -> bool:
        """Whether the database answers at all: tells a refused row from an outage."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    def claim_report(
        self, experiment: str, holder: str, ttl_s: float, now: float | None = None
    ) -> bool:
        """Whether ``holder`` should refresh ``experiment``'s report gauges now.

        Building the report reads the whole experiment; with every ingress replica doing
        it, a 4-replica deployment spent a quarter of its CPU there (py-spy). One replica
        holds a lease and renews it each time; another takes over once it has lapsed for
        ``ttl_s``, so a lost replica is replaced without any coordination service.
        """
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            renewed = conn.execute(
                report_lease.update()
                .where(
                    report_lease.c.experiment == experiment,
                    sa.or_(report_lease.c.holder == holder, report_lease.c.expires_at < now),
                )
                .values(holder=holder, expires_at=now + ttl_s)
            ).rowcount
            if renewed:
                return True
            claim = (
                _insert_ignoring_duplicates(self.engine, report_lease)
                .values(experiment=experiment, holder=holder, expires_at=now + ttl_s)
                .returning(report_lease.c.holder)  # rowcount is -1 here on psycopg
            )
            return conn.execute(claim).first() is not None

    def live_predictions(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The answered (live) prediction behind each known request id, for feedback."""
        ids = list(request_ids)
        if not ids:
            return {}
        query = sa.select(
            predictions.c.request_id,
            predictions.c.experiment,
            predictions.c.variant,
            predictions.c.predictions,
        ).where(predictions.c.request_id.in_(ids), predictions.c.shadow.is_(False))
        with self.engine.connect() as conn:
            return {r.request_id: dict(r._mapping) for r in conn.execute(query)}

    def recent_predictions(
        self, limit: int, variant: str | None = None, shadow: bool | None = None
    ) -> list[dict[str, Any]]:
        query = sa.select(predictions).order_by(predictions.c.id.desc()).limit(limit)
        if variant is not None:
            query = query.where(predictions.c.variant == variant)
        if shadow is not None:
            query = query.where(predictions.c.shadow == shadow)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def recent_outcomes(self, experiment: str, since: float) -> list[dict[str, Any]]:
        """Outcome and latency of the experiment's predictions since ``since``."""
        query = sa.select(
            predictions.c.variant,
            predictions.c.shadow,
            predictions.c.outcome,
            predictions.c.latency_ms,
        ).where(predictions.c.experiment == experiment, predictions.c.created_at >= since)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def recent_inputs(self, experiment: str, variant: str, limit: int) -> list[list[float]]:
        """The input rows of a variant's ``limit`` most recent answered predictions, for
        drift. Kept apart from :meth:`experiment_rows`, because decoding every stored
        input of a large experiment cost the report builder gigabytes and most of its time.
        """
        query = (
            sa.select(predictions.c.inputs)
            .where(
                predictions.c.experiment == experiment,
                predictions.c.variant == variant,
                predictions.c.shadow.is_(False),
                predictions.c.outcome == "ok",
            )
            .order_by(predictions.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [row for (inputs,) in conn.execute(query) for row in inputs]

    def experiment_rows(self, experiment: str, limit: int = 200_000) -> list[dict[str, Any]]:
        """The experiment's most recent predictions, each with its feedback if any (inputs
        are left out: see :meth:`recent_inputs`)."""
        query = (
            sa.select(
                predictions.c.request_id,
                predictions.c.variant,
                predictions.c.shadow,
                predictions.c.created_at,
                predictions.c.latency_ms,
                predictions.c.outcome,
                predictions.c.model_version,
                predictions.c.predictions,
                feedback.c.label,
                feedback.c.value,
            )
            .select_from(
                predictions.outerjoin(feedback, feedback.c.request_id == predictions.c.request_id)
            )
            .where(predictions.c.experiment == experiment)
            .order_by(predictions.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        rows.reverse()  # arrival order, which the sequential test needs
        return rows

    def dispose(self) -> None:
        self.engine.dispose()
