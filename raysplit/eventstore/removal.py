"""Taking an experiment out of the event store: archive it, or delete every row of it.

An event store outlives its experiments: every experiment a cluster ever served keeps its
raw predictions, feedback, rollups and rollout log, and the results page lists them all.
Archiving takes one off that list (``GET /experiments``) and keeps everything, so its
report is still read by name. Deleting removes its rows from every table that holds them,
in bounded batches (as prune does, :mod:`raysplit.eventstore.lake.archive`), so no
transaction holds locks for long and a large experiment never needs one huge one.

A delete that stops midway (the database went away, the command was interrupted) is
finished by running it again: the experiment is archived first and its archive row is
deleted last, so until the end the experiment is still known (and off the page), and
every step deletes what is left of its table, whatever an earlier run did.

Kept on purpose: accepted configs (keyed by Serve application, not experiment: a starting
replica falls back on them, :mod:`raysplit.eventstore.accepted_configs`), and feedback whose
prediction had already been pruned (nothing ties it to an experiment any more; a later
prune takes it with the other orphans).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.dialect import insert_ignoring
from raysplit.eventstore.labelled import error_reason
from raysplit.eventstore.lake.archive import DELETE_BATCH_ROWS, store_engine, write_transaction
from raysplit.eventstore.queries import experiment_spans
from raysplit.eventstore.schema import (
    allocations,
    cells,
    experiment_archive,
    feedback,
    leases,
    pairs,
    prediction_keys,
    predictions,
    rollout_decisions,
    rollouts,
    scoring_table,
    units,
)

# Every table with an ``experiment`` column, in the order a delete empties them: the raw
# rows (with their feedback) first, the rollups and logs after, the archive row last.
# A table added to the schema with such a column and not listed here fails
# tests/integration/test_experiment_removal.py.
EXPERIMENT_TABLES: tuple[sa.Table, ...] = (
    prediction_keys,
    predictions,
    units,
    cells,
    pairs,
    allocations,
    rollout_decisions,
    rollouts,
    experiment_archive,
)
FEEDBACK = "raysplit_feedback (of its requests)"
LEASES = "raysplit_leases"


class ExperimentHolding(BaseModel):
    """One experiment as ``raysplit experiments list`` shows it (times None: it has no
    live prediction, only e.g. an allocation or a rollout)."""

    experiment: str
    first_at: float | None
    last_at: float | None
    predictions: int  # live (non-shadow) requests, from the rollup: pruned ones included
    labelled: int
    archived: bool


class DeleteCounts(BaseModel):
    """Rows deleted per table, and the transactions that deleted any."""

    experiment: str
    rows: dict[str, int]
    batches: int

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class DeleteIncomplete(RaysplitError):
    """A delete stopped midway; the message names what is left. Running it again
    finishes it."""


def lease_names(experiment: str) -> tuple[str, str]:
    """The leases an experiment's jobs hold: its report gauges and its rollout's decisions
    (see :meth:`raysplit.eventstore.store.EventStore.claim_lease`)."""
    return experiment, f"rollout:{experiment}"


def _feedback_of(experiment: str, dialect: str) -> sa.ColumnElement[bool]:
    """Feedback to one of the experiment's requests, and to no other experiment's (a
    client-chosen request id could repeat across applications)."""
    k, f = scoring_table(dialect), feedback
    ours = sa.exists().where(k.c.request_id == f.c.request_id, k.c.experiment == experiment)
    theirs = sa.exists().where(k.c.request_id == f.c.request_id, k.c.experiment != experiment)
    return sa.and_(ours, sa.not_(theirs))


def holdings(store: str | Engine, experiment: str) -> dict[str, int]:
    """Rows per table that hold ``experiment`` (tables without any left out): what a
    delete would remove, and what a stopped one left."""
    with store_engine(store) as engine, engine.connect() as conn:
        dialect = engine.dialect.name
        counts = {}
        for table in EXPERIMENT_TABLES:
            if table is prediction_keys and dialect != "postgresql":
                continue  # SQLite reads its keys from the predictions themselves
            counts[table.name] = conn.execute(
                sa.select(sa.func.count()).where(table.c.experiment == experiment)
            ).scalar_one()
        counts[FEEDBACK] = conn.execute(
            sa.select(sa.func.count())
            .select_from(feedback)
            .where(_feedback_of(experiment, dialect))
        ).scalar_one()
        counts[LEASES] = conn.execute(
            sa.select(sa.func.count()).where(leases.c.name.in_(lease_names(experiment)))
        ).scalar_one()
    return {name: int(n) for name, n in counts.items() if n}


def known(held: dict[str, int]) -> bool:
    """Whether :func:`holdings` found the experiment: a lease alone lasts seconds and is
    no experiment."""
    return any(n for name, n in held.items() if name != LEASES)


def list_experiments(store: str | Engine) -> list[ExperimentHolding]:
    """Every experiment the store holds, the most recently active first: those with live
    predictions from the rollup (:func:`raysplit.eventstore.queries.experiment_spans`, as
    the results page reads them), then any known only from an allocation, a rollout or
    the archive."""
    with store_engine(store) as engine:
        spans = experiment_spans(engine)
        with engine.connect() as conn:
            others = set()
            for table in (allocations, rollouts, experiment_archive):
                others |= set(conn.execute(sa.select(table.c.experiment).distinct()).scalars())
            archived = set(conn.execute(sa.select(experiment_archive.c.experiment)).scalars())
    listed = [
        ExperimentHolding(
            experiment=s.experiment,
            first_at=s.first_at,
            last_at=s.last_at,
            predictions=s.requests,
            labelled=s.labelled,
            archived=s.archived,
        )
        for s in sorted(spans, key=lambda s: s.last_at, reverse=True)
    ]
    seen = {s.experiment for s in spans}
    listed += [
        ExperimentHolding(
            experiment=name,
            first_at=None,
            last_at=None,
            predictions=0,
            labelled=0,
            archived=name in archived,
        )
        for name in sorted(others - seen)
    ]
    return listed


def archive_experiment(store: str | Engine, experiment: str, now: float | None = None) -> float:
    """Mark ``experiment`` archived (again: a no-op) and return when it was first marked.
    Its rows stay; only the results page's list leaves it out."""
    now = time.time() if now is None else now
    with store_engine(store) as engine:
        _mark(engine, experiment, now)
        with engine.connect() as conn:
            return conn.execute(
                sa.select(experiment_archive.c.archived_at).where(
                    experiment_archive.c.experiment == experiment
                )
            ).scalar_one()


def _mark(engine: Engine, experiment: str, now: float) -> None:
    with write_transaction(engine) as conn:
        conn.execute(
            insert_ignoring(engine.dialect.name, experiment_archive).values(
                experiment=experiment, archived_at=now
            )
        )


def _delete_batched(
    engine: Engine,
    key: tuple[sa.Column, ...],
    where: sa.ColumnElement[bool],
    batch_rows: int,
) -> tuple[int, int]:
    """Delete the rows of ``key``'s table that meet ``where``, walking ``key`` (unique in
    the table) ``batch_rows`` rows per transaction: the shape of prune's
    ``_delete_by_time``, bounded by a key instead of a time. Returns the rows deleted and
    the transactions that deleted any."""
    table, ordered = key[0].table, sa.tuple_(*key)
    deleted = batches = 0
    last = None
    while True:
        bounds = [where] if last is None else [where, ordered > sa.tuple_(*last)]
        with write_transaction(engine) as conn:
            upper = conn.execute(
                sa.select(*key).where(*bounds).order_by(*key).offset(batch_rows - 1).limit(1)
            ).first()
            bounded = bounds if upper is None else [*bounds, ordered <= sa.tuple_(*upper)]
            count = conn.execute(sa.delete(table).where(*bounded)).rowcount
        deleted, batches = deleted + count, batches + (count > 0)
        if upper is None:
            return deleted, batches
        last = tuple(upper)


def _delete_requests(engine: Engine, experiment: str, batch_rows: int) -> dict[str, int]:
    """The experiment's predictions with their feedback, ``batch_rows`` predictions per
    transaction, walked by their keys (PostgreSQL's unpartitioned key table, SQLite's
    predictions). Each transaction deletes a batch's feedback, its raw rows (on
    PostgreSQL in the batch's day partitions only) and then its keys, so a batch is never
    left with its keys gone and its feedback still there: the keys are how the feedback
    is found."""
    dialect = engine.dialect.name
    k, p, f = scoring_table(dialect), predictions, feedback
    key = (k.c.created_at, k.c.request_id, k.c.variant)
    ordered = sa.tuple_(*key)
    counts = {FEEDBACK: 0, p.name: 0, "batches": 0}
    if k is not p:
        counts[k.name] = 0
    last = None
    while True:
        bounds = [k.c.experiment == experiment]
        if last is not None:
            bounds.append(ordered > sa.tuple_(*last))
        with write_transaction(engine) as conn:
            batch = conn.execute(
                sa.select(*key).where(*bounds).order_by(*key).limit(batch_rows)
            ).all()
            if not batch:
                return counts
            ids = sorted({row.request_id for row in batch})
            counts[FEEDBACK] += conn.execute(
                sa.delete(f).where(f.c.request_id.in_(ids), _feedback_of(experiment, dialect))
            ).rowcount
            if k is not p:  # the raw rows of these requests, in the batch's days
                counts[p.name] += conn.execute(
                    sa.delete(p).where(
                        p.c.experiment == experiment,
                        p.c.request_id.in_(ids),
                        p.c.created_at.between(batch[0].created_at, batch[-1].created_at),
                    )
                ).rowcount
            counts[k.name] += conn.execute(
                sa.delete(k).where(*bounds, ordered <= sa.tuple_(*batch[-1]))
            ).rowcount
        counts["batches"] += 1
        last = tuple(batch[-1])


def _steps(
    engine: Engine, experiment: str, batch_rows: int
) -> list[tuple[str, Callable[[], dict[str, int]]]]:
    """The delete, step by step, each step named for the error of a stopped run."""

    def batched(table: sa.Table, key: tuple[sa.Column, ...]) -> Callable[[], dict[str, int]]:
        def run() -> dict[str, int]:
            deleted, batches = _delete_batched(
                engine, key, table.c.experiment == experiment, batch_rows
            )
            return {table.name: deleted, "batches": batches}

        return run

    def rollup_key(table: sa.Table) -> tuple[sa.Column, ...]:
        return tuple(c for c in table.primary_key.columns if c.name != "experiment")

    def drop_leases() -> dict[str, int]:
        with write_transaction(engine) as conn:
            gone = conn.execute(sa.delete(leases).where(leases.c.name.in_(lease_names(experiment))))
        return {LEASES: gone.rowcount, "batches": int(gone.rowcount > 0)}

    p, a = predictions, experiment_archive
    steps = [(f"{FEEDBACK} and {p.name}", lambda: _delete_requests(engine, experiment, batch_rows))]
    if engine.dialect.name == "postgresql":  # raw rows whose keys were never written
        steps.append((p.name, batched(p, (p.c.created_at, p.c.id))))
    steps += [(t.name, batched(t, rollup_key(t))) for t in (units, cells, pairs)]
    steps += [
        (allocations.name, batched(allocations, (allocations.c.id,))),
        (rollout_decisions.name, batched(rollout_decisions, (rollout_decisions.c.id,))),
        (rollouts.name, batched(rollouts, (rollouts.c.experiment,))),
        (LEASES, drop_leases),
        (a.name, batched(a, (a.c.experiment,))),  # last: until here, a rerun finds it
    ]
    return steps


def delete_experiment(
    store: str | Engine,
    experiment: str,
    *,
    batch_rows: int = DELETE_BATCH_ROWS,
    now: float | None = None,
) -> DeleteCounts:
    """Delete every row of ``experiment`` from every table that holds it, in batches of
    ``batch_rows``; another experiment's rows, on the same days included, are untouched.

    Idempotent: deleting a deleted (or unknown) experiment deletes nothing. A failure
    midway raises :class:`DeleteIncomplete` naming the step it stopped at and the rows
    left; the experiment stays archived until a second run finishes it."""
    if batch_rows < 1:
        raise RaysplitError("delete: batch_rows must be at least 1")
    with store_engine(store) as engine:
        rows: dict[str, int] = {}
        batches = 0
        if known(holdings(engine, experiment)):  # off the page first; the marker for a rerun
            _mark(engine, experiment, time.time() if now is None else now)
        for step, run in _steps(engine, experiment, batch_rows):
            try:
                done = run()
            except sa.exc.DBAPIError as exc:
                raise DeleteIncomplete(
                    _stopped(engine, experiment, step, error_reason(exc, engine.url))
                ) from exc
            batches += done.pop("batches")
            for name, count in done.items():
                rows[name] = rows.get(name, 0) + count
    return DeleteCounts(experiment=experiment, rows=rows, batches=batches)


def _stopped(engine: Engine, experiment: str, step: str, reason: str) -> str:
    """The message of a delete that stopped: where, why, and what is left if the store
    still answers."""
    try:
        left = holdings(engine, experiment)
        shown = ", ".join(f"{name} {n}" for name, n in left.items()) or "nothing"
    except sa.exc.DBAPIError:
        shown = "unknown (the store does not answer)"
    return (
        f"deleting experiment '{experiment}' stopped at {step}: {reason}; rows left: {shown};"
        " it stays archived, and running the delete again finishes it"
    )
