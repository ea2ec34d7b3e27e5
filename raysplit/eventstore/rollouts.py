"""A rollout's state and decision log as rows of the event store (SQLAlchemy Core).

The record and its log entries are the rollout's own pydantic models
(:class:`serve_app.rollout.state.RolloutRecord` and ``DecisionEntry``): the store is given
their classes and keeps the record as JSON, so it knows their columns but not their rules.

Every change is a compare-and-set on the record's ``seq``, in one transaction with its
decision-log row: a writer that read a stale record (a controller killed and replaced, two
replicas taking the same operator command) writes nothing, so a step is never skipped or
taken twice, and no decision is logged that did not take effect.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Generic, Protocol, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel

from raysplit.eventstore.dialect import insert_ignoring
from raysplit.eventstore.schema import BEGIN_OPTION, rollout_decisions, rollouts

DECISION_LOG_LIMIT = 500  # log entries GET /rollout shows by default


class Record(Protocol):
    """What the store reads of a rollout record besides its JSON."""

    experiment: str
    rollout_id: str
    seq: int
    phase: StrEnum

    def model_dump(self, *, mode: str = ...) -> dict: ...


class Entry(Protocol):
    experiment: str
    rollout_id: str
    kind: str

    def model_dump(self) -> dict: ...


RecordT = TypeVar("RecordT", bound=BaseModel)
EntryT = TypeVar("EntryT", bound=BaseModel)


class RolloutStore(Generic[RecordT, EntryT]):
    """Reads and compare-and-set writes of one database's rollouts."""

    def __init__(self, engine: sa.Engine, record_type: type[RecordT], entry_type: type[EntryT]):
        self.engine = engine
        self.record_type = record_type
        self.entry_type = entry_type

    def _writing(self) -> sa.Connection:
        """A connection whose transactions hold SQLite's write lock from the start (the
        read and the write of a compare-and-set must not interleave with another's);
        PostgreSQL gets the same from the row lock and the conditional update."""
        return self.engine.connect().execution_options(**{BEGIN_OPTION: "BEGIN IMMEDIATE"})

    def read(self, experiment: str) -> RecordT | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(rollouts.c.record).where(rollouts.c.experiment == experiment)
            ).first()
        return None if row is None else self.record_type.model_validate(row.record)

    def start(self, record: Record, configured_at: float, entry: Entry) -> bool:
        """Make ``record`` the experiment's rollout unless this rollout is already there or
        a newer deploy's rollout is (``configured_at`` orders deploys). Returns whether it
        was written."""
        values = {
            "rollout_id": record.rollout_id,
            "seq": record.seq,
            "phase": record.phase.value,
            "record": record.model_dump(mode="json"),
            "configured_at": configured_at,
        }
        with self._writing() as conn, conn.begin():
            current = conn.execute(
                sa.select(rollouts.c.rollout_id, rollouts.c.configured_at)
                .where(rollouts.c.experiment == record.experiment)
                .with_for_update()
            ).first()
            if current is None:
                inserted = conn.execute(
                    insert_ignoring(self.engine.dialect.name, rollouts)
                    .values(experiment=record.experiment, **values)
                    .returning(rollouts.c.experiment)
                ).first()
                if inserted is None:  # another replica started it between our two reads
                    return False
            elif current.rollout_id == record.rollout_id or current.configured_at >= configured_at:
                return False
            else:
                conn.execute(  # the row is locked (FOR UPDATE / BEGIN IMMEDIATE)
                    rollouts.update()
                    .where(
                        rollouts.c.experiment == record.experiment,
                        rollouts.c.rollout_id == current.rollout_id,
                    )
                    .values(**values)
                )
            conn.execute(rollout_decisions.insert().values(**entry.model_dump()))
        return True

    def commit(self, before: Record, after: Record, entry: Entry | None) -> bool:
        """Write ``after`` (and its log entry) if the stored record is still ``before``.

        A hold (``after is before``) writes only its log entry, and only if the record is
        unchanged, so the log never shows a hold taken on a state that had moved on."""
        with self._writing() as conn, conn.begin():
            if after is before:
                still = conn.execute(
                    sa.select(rollouts.c.seq).where(
                        rollouts.c.experiment == before.experiment,
                        rollouts.c.rollout_id == before.rollout_id,
                        rollouts.c.seq == before.seq,
                    )
                ).first()
                written = still is not None
            else:
                written = (
                    conn.execute(
                        rollouts.update()
                        .where(
                            rollouts.c.experiment == before.experiment,
                            rollouts.c.rollout_id == before.rollout_id,
                            rollouts.c.seq == before.seq,
                        )
                        .values(
                            seq=after.seq,
                            phase=after.phase.value,
                            record=after.model_dump(mode="json"),
                        )
                    ).rowcount
                    == 1
                )
            if written and entry is not None:
                conn.execute(rollout_decisions.insert().values(**entry.model_dump()))
        return written

    def note_once(self, entry: Entry, marker: str) -> bool:
        """Log ``entry`` (which changes nothing in the record) unless the rollout's log
        already holds an entry of its kind whose reason starts with ``marker``: every
        replica refuses the same deploy, and the log should say so once."""
        d = rollout_decisions
        with self._writing() as conn, conn.begin():
            conn.execute(  # serialise the check and the insert (row lock / BEGIN IMMEDIATE)
                sa.select(rollouts.c.seq)
                .where(rollouts.c.experiment == entry.experiment)
                .with_for_update()
            )
            seen = conn.execute(
                sa.select(d.c.id).where(
                    d.c.rollout_id == entry.rollout_id,
                    d.c.kind == entry.kind,
                    d.c.reason.startswith(marker, autoescape=True),
                )
            ).first()
            if seen is not None:
                return False
            conn.execute(d.insert().values(**entry.model_dump()))
        return True

    def decisions(
        self, rollout_id: str, limit: int = DECISION_LOG_LIMIT, holds: bool = True
    ) -> list[EntryT]:
        """The newest ``limit`` entries of a rollout's log, oldest first."""
        d = rollout_decisions
        query = sa.select(*(d.c[name] for name in self.entry_type.model_fields)).where(
            d.c.rollout_id == rollout_id
        )
        if not holds:
            query = query.where(d.c.kind != "hold")
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(d.c.id.desc()).limit(limit)).all()
        return [self.entry_type.model_validate(dict(r._mapping)) for r in reversed(rows)]
