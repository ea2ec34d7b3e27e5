"""Every prediction and piece of feedback as a row in a real database (SQLAlchemy Core).

SQLite in WAL mode under RAYSPLIT_HOME by default, PostgreSQL by URL for clusters.
:class:`EventStore` owns the engine: serving reaches every table through it (the report's
reads, rollouts, accepted configs, key use, leases), so the connection handling, the
dialect differences and the locks live in this package and nowhere else. The tables and
their migrations are in :mod:`raysplit.eventstore.schema`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from raysplit.core.events import AllocationEvent, Event, FeedbackEvent, PredictionEvent
from raysplit.eventstore.accepted_configs import AcceptedConfigs
from raysplit.eventstore.bulk import copy_rows, forget_stages_on_rollback, insert_new
from raysplit.eventstore.corrections import replace_labels, resolve_feedback
from raysplit.eventstore.dialect import insert_ignoring
from raysplit.eventstore.key_use import Tally, add_use, read_use
from raysplit.eventstore.migrations import migrate
from raysplit.eventstore.partitions import DayPartitions
from raysplit.eventstore.queries import ExperimentQueries, ExperimentSpan, experiment_spans
from raysplit.eventstore.rollouts import EntryT, RecordT, RolloutStore
from raysplit.eventstore.rollup import (
    Label,
    Rollup,
    apply_pairs,
    pair_deltas,
    pair_states,
    stored_query,
)
from raysplit.eventstore.schema import (
    BEGIN_OPTION,
    SCHEMA_VERSION,
    SCORED_COLUMNS,
    SchemaError,
    allocations,
    feedback,
    leases,
    make_engine,
    prediction_keys,
    predictions,
    schema_info,
    scoring_table,
)

__all__ = ["SCHEMA_VERSION", "EventStore", "SchemaError", "predictions", "schema_info"]


STORED_KEY = ("request_id", "variant")  # what tells a stored prediction
FED_KEY = ("request_id",)  # and a stored label

NO_PARTITION = "23514"  # PostgreSQL's check_violation: "no partition of relation found"

# The class of raysplit's per-request advisory locks in PostgreSQL's two-key lock space
# ("rays" in ASCII); the second key is a 32-bit hash of the request id
REQUEST_LOCKS = 0x72617973


def request_lock_keys(request_ids: Iterable[str]) -> list[int]:
    """The advisory-lock keys of a batch's request ids, sorted: every writer takes its locks
    in the same order, so two batches that share requests wait, and never deadlock. Two ids
    that hash alike only make their writers wait for each other."""
    keys = {
        int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=4).digest(), "big", signed=True)
        for rid in request_ids
    }
    return sorted(keys)


def new_prediction_rows(
    rows: list[dict[str, Any]], stored: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """The rows this write inserted, each once: a repeat within the batch counts once."""
    new = set(stored)
    kept = []
    for row in rows:
        if (key := (row["request_id"], row["variant"])) in new:
            new.discard(key)
            kept.append(row)
    return kept


def prior_labels(rows: list[Any], relabelled: set[str]) -> dict[str, Label]:
    """Labels stored before this write: they score its new predictions (a label this write
    stored or corrected scores every stored prediction instead, so nothing is scored twice)."""
    return {
        r.request_id: (r.label_text, r.value, r.covariate)
        for r in rows
        if r.request_id not in relabelled and (r.label_text is not None or r.value is not None)
    }


def stored_labels(rows: list[Any], relabelled: set[str]) -> tuple[list[Any], dict[str, Label]]:
    """The stored predictions of the requests this write labelled (first or corrected), and
    each one's label as stored now: read back from the database rather than from the batch,
    so the rollup scores with exactly the label the table holds."""
    found = [r for r in rows if r.request_id in relabelled]
    return found, {r.request_id: (r.label_text, r.value, r.covariate) for r in found}


class EventStore:
    """Batched, idempotent writes and the reads the experiment report needs."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        forget_stages_on_rollback(self.engine)
        self.version = migrate(self.engine)
        self.partitions: DayPartitions | None = None  # PostgreSQL's, see partitions.py
        if self.engine.dialect.name == "postgresql":
            self.partitions = DayPartitions(self.engine)
            self.partitions.ensure([time.time()])
        self.accepted_configs = AcceptedConfigs(self.engine)

    def queries(self, experiment: str, classification: bool) -> ExperimentQueries:
        """The report's reads of one experiment."""
        return ExperimentQueries(self.engine, experiment, classification)

    def rollouts(
        self, record_type: type[RecordT], entry_type: type[EntryT]
    ) -> RolloutStore[RecordT, EntryT]:
        """Rollout records and decision logs, as the caller's models."""
        return RolloutStore(self.engine, record_type, entry_type)

    def experiment_spans(self) -> list[ExperimentSpan]:
        return experiment_spans(self.engine)

    def add_key_use(self, counts: Mapping[str, Tally]) -> None:
        add_use(self.engine, counts)

    def key_use(self) -> dict[str, dict[str, Any]]:
        return read_use(self.engine)

    def write(self, events: Sequence[Event]) -> set[str]:
        """Write one batch in one transaction, with the report's counts it changes (see
        :mod:`raysplit.eventstore.rollup`); repeats (same request id) are ignored, except
        feedback with ``replace``, which corrects a stored label
        (:mod:`raysplit.eventstore.corrections`).

        Returns the request ids whose feedback was new: a client that posts the same
        feedback twice (or to two replicas) must be counted once, as the store keeps it. A
        corrected label is not new (Prometheus' counters cannot take the first one back).
        """
        prediction_rows = [e.row() for e in events if isinstance(e, PredictionEvent)]
        feedback_events = [e for e in events if isinstance(e, FeedbackEvent)]
        allocation_rows = [e.row() for e in events if isinstance(e, AllocationEvent)]
        if self.partitions is None:
            return self._write(prediction_rows, feedback_events, allocation_rows)
        times = [r["created_at"] for r in prediction_rows]
        self.partitions.ensure(times)
        try:
            return self._write(prediction_rows, feedback_events, allocation_rows)
        except Exception as exc:  # psycopg's own error: COPY runs on the driver's cursor
            if getattr(getattr(exc, "orig", exc), "sqlstate", None) != NO_PARTITION:
                raise
            # a day this process knew was dropped by a prune since (a late event)
            self.partitions.forget()
            self.partitions.ensure(times)
            return self._write(prediction_rows, feedback_events, allocation_rows)

    def _write(
        self,
        prediction_rows: list[dict[str, Any]],
        feedback_events: list[FeedbackEvent],
        allocation_rows: list[dict[str, Any]],
    ) -> set[str]:
        dialect = self.engine.dialect.name
        feedback_rows, replacements = resolve_feedback(feedback_events)
        options = {BEGIN_OPTION: "BEGIN IMMEDIATE"}  # SQLite: hold the write lock throughout
        with self.engine.connect().execution_options(**options) as conn, conn.begin():
            if dialect == "postgresql":  # SQLite: BEGIN IMMEDIATE serialises writers already
                self._lock_requests(conn, prediction_rows, feedback_rows)
            if allocation_rows:  # the first replica to serve an allocation dates it
                allocation_rows.sort(key=lambda r: (r["experiment"], r["key"]))  # lock order
                conn.execute(insert_ignoring(dialect, allocations), allocation_rows)
            if dialect == "postgresql":  # the key first; the raw row into its day
                keys = [{name: r[name] for name in SCORED_COLUMNS} for r in prediction_rows]
                stored = set(insert_new(conn, prediction_keys, keys, STORED_KEY))
                copy_rows(conn, predictions, new_prediction_rows(prediction_rows, stored))
            else:
                stored = set(insert_new(conn, predictions, prediction_rows, STORED_KEY))
            new_feedback = {rid for (rid,) in insert_new(conn, feedback, feedback_rows, FED_KEY)}
            replaced = replace_labels(
                conn, {rid: row for rid, row in replacements.items() if rid not in new_feedback}
            )
            relabelled = new_feedback | replaced.keys()  # scored with the label stored now
            touched = {r["request_id"] for r in (*prediction_rows, *feedback_rows)}
            rows = []
            if touched:
                rows = list(conn.execute(stored_query(dialect), {"ids": list(touched)}))
            rollup = Rollup()
            rollup.add_predictions(
                new_prediction_rows(prediction_rows, stored), prior_labels(rows, relabelled)
            )
            rollup.add_labels(*stored_labels(rows, relabelled))
            # a corrected label comes back out of the predictions it scored before this write
            retracted = [
                r
                for r in rows
                if r.request_id in replaced and (r.request_id, r.variant) not in stored
            ]
            rollup.add_labels(retracted, replaced, sign=-1)
            rollup.apply(conn)
            if any(r.shadow for r in rows):  # a pair needs a shadow's answer
                before = {rid: (text, value) for rid, (text, value, _) in replaced.items()}
                apply_pairs(conn, pair_deltas(pair_states(rows), stored, relabelled, before))
        return new_feedback

    @staticmethod
    def _lock_requests(conn: sa.Connection, *batches: list[dict[str, Any]]) -> None:
        """Hold the batch's request ids until commit, and nothing wider.

        A label scores its prediction in whichever write stores the second of the two; two
        writers storing them at once must not both miss the other. Each holds a lock per
        request id (transaction-scoped advisory locks, taken in sorted order), so the second
        waits for the first to commit and then reads its rows; writers of other requests
        never wait (the first version took one lock for the whole cluster: its ingest did
        not grow with writers, docs/events.md)."""
        keys = request_lock_keys(r["request_id"] for rows in batches for r in rows)
        if keys:
            conn.execute(
                sa.text(
                    "SELECT pg_advisory_xact_lock(:cls, k)"
                    " FROM unnest(CAST(:keys AS integer[])) AS k"
                ),
                {"cls": REQUEST_LOCKS, "keys": keys},
            )

    def reachable(self) -> bool:
        """Whether the database answers at all: tells a refused row from an outage."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except Exception:
            return False
        return True

    def claim_lease(self, lease: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        """Whether ``holder`` holds ``lease`` now (claimed, or renewed).

        One replica does a job that must not run on every replica: the report's gauges
        (building the report reads the whole experiment; with every ingress replica doing
        it, a 4-replica deployment spent a quarter of its CPU there, py-spy) and a
        rollout's decisions (exactly one decision maker). The holder renews the lease each
        time; another replica takes over once it has lapsed for ``ttl_s``, so a lost
        replica is replaced without any coordination service.
        """
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            renewed = conn.execute(
                leases.update()
                .where(
                    leases.c.name == lease,
                    sa.or_(leases.c.holder == holder, leases.c.expires_at < now),
                )
                .values(holder=holder, expires_at=now + ttl_s)
            ).rowcount
            if renewed:
                return True
            claim = (
                insert_ignoring(self.engine.dialect.name, leases)
                .values(name=lease, holder=holder, expires_at=now + ttl_s)
                .returning(leases.c.holder)  # rowcount is -1 here on psycopg
            )
            return conn.execute(claim).first() is not None

    def live_predictions(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The answered (live) prediction behind each known request id, for feedback."""
        ids = list(request_ids)
        if not ids:
            return {}
        p, k = predictions, scoring_table(self.engine.dialect.name)
        query = sa.select(p.c.request_id, p.c.experiment, p.c.variant, p.c.predictions, p.c.inputs)
        if k is not p:  # PostgreSQL: found by key, then read in its own day's partition only
            query = query.select_from(
                k.join(
                    p,
                    sa.and_(
                        p.c.request_id == k.c.request_id,
                        p.c.variant == k.c.variant,
                        p.c.created_at == k.c.created_at,
                    ),
                )
            )
        query = query.where(k.c.request_id.in_(ids), k.c.shadow.is_(False))
        with self.engine.connect() as conn:
            return {r.request_id: dict(r._mapping) for r in conn.execute(query)}

    def recent_predictions(
        self,
        limit: int,
        variant: str | None = None,
        shadow: bool | None = None,
        experiment: str | None = None,
    ) -> list[dict[str, Any]]:
        query = sa.select(predictions).order_by(predictions.c.id.desc()).limit(limit)
        if experiment is not None:
            query = query.where(predictions.c.experiment == experiment)
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
        drift: decoding every stored input of a large experiment cost the first report builder
        gigabytes and most of its time.
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

    def dispose(self) -> None:
        self.engine.dispose()
