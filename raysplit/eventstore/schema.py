"""The event store's tables and engines.

The schema carries an explicit version so a newer raysplit migrates an older database in
place (:mod:`raysplit.eventstore.migrations`) and an older raysplit refuses a newer one
instead of corrupting it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from raysplit.core.events import MAX_REQUEST_ID

SCHEMA_VERSION = 12

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
    # v4: how the request was assigned, under which allocation, by which sticky unit, and
    # the single prediction as columns feedback is compared with in SQL (see
    # raysplit.core.events.scored_prediction)
    sa.Column("assignment", sa.String(8), nullable=False, server_default="split"),
    sa.Column("allocation", sa.String(32), nullable=False, server_default=""),
    sa.Column("unit_hash", sa.String(32)),
    sa.Column("predicted", sa.String(256)),
    sa.Column("predicted_value", sa.Float),
    # v10: PostgreSQL partitions this table by day and keeps this key as a plain index
    # (raysplit.eventstore.partitions); SQLite keeps it unique
    sa.UniqueConstraint("request_id", "variant", name="uq_prediction_request_variant"),
    sa.Index("ix_predictions_experiment_created", "experiment", "created_at"),
    sa.Index("ix_predictions_experiment_shadow", "experiment", "shadow"),  # v4: paired shadows
    # v4: a variant's latest rows (latency percentiles, drift) without scanning the rest
    sa.Index("ix_predictions_experiment_variant", "experiment", "variant", "id"),
)

# v10: on PostgreSQL, whose raw predictions are partitioned by day and so hold no unique
# key on the request id (raysplit.eventstore.partitions), each stored prediction's key and
# the columns scoring reads, in one unpartitioned table: writers insert here first (the
# key decides what is new) and read here by request id (one index, not one per day).
# SQLite reads these columns from raysplit_predictions itself and has no such table.
SCORED_COLUMNS = (
    "request_id",
    "experiment",
    "variant",
    "shadow",
    "assignment",
    "allocation",
    "model_version",
    "created_at",
    "outcome",
    "predicted",
    "predicted_value",
    "unit_hash",
)
prediction_keys = sa.Table(
    "raysplit_prediction_keys",
    metadata,
    *(
        sa.Column(
            name,
            predictions.c[name].type,
            primary_key=name in ("request_id", "variant"),
            nullable=predictions.c[name].nullable,
        )
        for name in SCORED_COLUMNS
    ),
    sa.Index("ix_prediction_keys_created", "created_at"),  # prune walks it by time
)


def scoring_table(dialect: str) -> sa.Table:
    """Where a prediction's key and scored columns are read by request id."""
    return prediction_keys if dialect == "postgresql" else predictions


feedback = sa.Table(
    "raysplit_feedback",
    metadata,
    sa.Column("request_id", sa.String(MAX_REQUEST_ID), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("label", sa.JSON),
    sa.Column("value", sa.Float),
    sa.Column("label_text", sa.String(256)),  # v4: the label as predictions' `predicted`
    sa.Column("covariate", sa.Float),  # v9: see raysplit.core.events.FeedbackEvent.covariate
    sa.Index("ix_feedback_created", "created_at"),  # v4: the recent label delays
)

# v4: the report's counts and sums, kept up to date by every write (raysplit.eventstore.rollup)
# so the report reads one row per variant, allocation, assignment, version and minute
# instead of every prediction
BUCKET_S = 60.0

# The rollups' counters: sums that writes add to and the report reads.
CELL_COUNTERS: dict[str, type] = {
    "requests": sa.Integer,
    "errors": sa.Integer,
    "log_latency_sum": sa.Float,  # of answered requests' ln(latency_ms)
    "log_latency_sq": sa.Float,
    "labelled": sa.Integer,  # answered single-row requests with feedback
    "correct": sa.Integer,
    "abs_error_sum": sa.Float,
    "abs_error_sq": sa.Float,
    # v9: labelled requests whose feedback carries a covariate x, and sums of x, x^2 and
    # x * outcome (correct, or the absolute error): CUPED's regression adjustment
    "cov_n": sa.Integer,
    "cov_sum": sa.Float,
    "cov_sq": sa.Float,
    "cov_y": sa.Float,
}
PAIR_COUNTERS: dict[str, type] = {
    "compared": sa.Integer,  # shadow and live answers to the same request
    "agreed": sa.Integer,
    "labelled": sa.Integer,  # of those, with a label (classifiers)
    "both_correct": sa.Integer,
    "live_only": sa.Integer,
    "shadow_only": sa.Integer,
    "neither": sa.Integer,
    "valued": sa.Integer,  # with a value (regressors)
    "diff_sum": sa.Float,  # |shadow error| - |live error|
    "diff_sq": sa.Float,
}


def _counters(spec: dict[str, type]) -> list[sa.Column]:
    return [
        sa.Column(name, kind, nullable=False, server_default="0") for name, kind in spec.items()
    ]


cells = sa.Table(
    "raysplit_cells",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("variant", sa.String(64), primary_key=True),
    sa.Column("allocation", sa.String(32), primary_key=True),
    sa.Column("assignment", sa.String(8), primary_key=True),
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),  # floor(created_at / BUCKET_S)
    *_counters(CELL_COUNTERS),
)

# v4: each shadow against the live answer to the same requests, per the live answer's
# allocation and minute: agreement on every pair, and the paired scores once labelled
pairs = sa.Table(
    "raysplit_pairs",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("shadow", sa.String(64), primary_key=True),
    sa.Column("allocation", sa.String(32), primary_key=True),
    sa.Column("bucket", sa.Integer, primary_key=True),
    *_counters(PAIR_COUNTERS),
)

# v4: each sticky unit (a salted hash of the user's key) a variant served in an allocation;
# v8: with the unit's own counts and sums, since sticky traffic is randomised by user and
# its variance is a user's, not a request's (serve_app.stats.clustered)
units = sa.Table(
    "raysplit_units",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("allocation", sa.String(32), primary_key=True),
    sa.Column("variant", sa.String(64), primary_key=True),
    sa.Column("unit_hash", sa.String(32), primary_key=True),
    *_counters(CELL_COUNTERS),
    # v11: the report's per-user moments join the rollup to itself on the user; without
    # it SQLite scanned every user for every user (2.2 s a report at 5,000 users, 68 ms with)
    sa.Index("ix_units_user", "experiment", "unit_hash"),
)

# v4: each allocation (live variants, weights, salt) an experiment served, from the first
# time a replica served it; the experiment's epochs are numbered in this order
allocations = sa.Table(
    "raysplit_allocations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(128), nullable=False),
    sa.Column("key", sa.String(32), nullable=False),
    sa.Column("shares", sa.JSON, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.UniqueConstraint("experiment", "key", name="uq_allocation_experiment_key"),
)


# v7 (v3 as raysplit_report_lease): which replica does a job only one may do, by the job's
# name: an experiment's report gauges (its name) and its rollout's decisions
# ("rollout:<experiment>"); see EventStore.claim_lease
leases = sa.Table(
    "raysplit_leases",
    metadata,
    sa.Column("name", sa.String(160), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


# v5: each experiment's rollout (serve_app.rollout.state.RolloutRecord as JSON) and every
# decision taken in it; writes compare-and-set on `seq` (serve_app.rollout.store)
rollouts = sa.Table(
    "raysplit_rollouts",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("rollout_id", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("phase", sa.String(16), nullable=False),
    sa.Column("record", sa.JSON, nullable=False),
    # when the deploy that started it was applied: an older replica's config never
    # replaces a newer rollout during a rolling update
    sa.Column("configured_at", sa.Float, nullable=False),
)

rollout_decisions = sa.Table(
    "raysplit_rollout_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("experiment", sa.String(128), nullable=False),
    sa.Column("rollout_id", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("share_after", sa.Float, nullable=False),
    sa.Column("reason", sa.String(1024), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("figures", sa.JSON),
    sa.Index("ix_rollout_decisions_rollout", "rollout_id", "id"),
)


# v6: the last user_config a replica of each Serve application accepted, so a replica that
# starts on a config it must refuse serves this one instead of failing
# (serve_app.predict.deploy_status)
accepted_configs = sa.Table(
    "raysplit_accepted_configs",
    metadata,
    sa.Column("application", sa.String(128), primary_key=True),
    sa.Column("config_hash", sa.String(16), nullable=False),
    sa.Column("user_config", sa.JSON, nullable=False),
    sa.Column("accepted_at", sa.Float, nullable=False),
    sa.Column("replica", sa.String(128), nullable=False),
)


# v6: when each API key (by its label: name or fingerprint) was last used, how often, and
# how often refused; replicas add their counts every few seconds (serve_app.http.key_use)
key_use = sa.Table(
    "raysplit_key_use",
    metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("last_used_at", sa.Float, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("refused", sa.Integer, nullable=False),
    sa.Column("last_route", sa.String(256), nullable=False),
)


# v12: the experiments `raysplit experiments archive` took off the results page's list
# (GET /experiments); an archived experiment's rows stay, and its report is read by name.
# `raysplit experiments delete` writes this row first and deletes it last, so an experiment
# whose delete stopped midway stays known (and hidden) until a second run finishes it
# (raysplit.eventstore.removal)
experiment_archive = sa.Table(
    "raysplit_experiment_archive",
    metadata,
    sa.Column("experiment", sa.String(128), primary_key=True),
    sa.Column("archived_at", sa.Float, nullable=False),
)


class SchemaError(RuntimeError):
    """The database holds a schema this raysplit cannot use."""


def _json(value: Any) -> str:
    # the standard library's encoder took 90% of event writes for 1000-row predictions
    return orjson.dumps(value).decode()


BEGIN_OPTION = "raysplit_sqlite_begin"
SQLITE_BUSY_TIMEOUT_S = 30.0


def _journal_to_wal(connection: sqlite3.Connection) -> None:
    """Switch the database to WAL (a no-op once it is).

    Switching needs the database to itself for a moment, and while another connection
    holds a write lock (another replica switching it, or migrating under BEGIN IMMEDIATE)
    SQLite refuses at once with "database is locked": the busy timeout does not apply.
    Replicas opening a new store together met exactly that, so the switch is retried
    within the same timeout as any other lock."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL").close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def make_engine(url: str) -> Engine:
    """An engine tuned for its back end: SQLite gets WAL and a busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, json_serializer=_json
        )

        @sa.event.listens_for(engine, "connect")
        def _wal(connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below), so a transaction can ask for a write
            # lock up front: pysqlite's own deferred BEGIN cannot.
            connection.isolation_level = None
            _journal_to_wal(connection)
            cursor = connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            try:  # the report's aggregates; SQLite builds without its math functions lack them
                cursor.execute("SELECT ln(1.0), floor(1.5)")
            except Exception:
                connection.create_function("ln", 1, math.log, deterministic=True)
                connection.create_function("floor", 1, math.floor, deterministic=True)
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql(
                connection.get_execution_options().get(BEGIN_OPTION, "BEGIN")
            )

        return engine
    return sa.create_engine(
        url, pool_pre_ping=True, pool_size=2, max_overflow=2, json_serializer=_json
    )
