"""The experiment report's inputs, read from the event store's rollup.

Counts and sums per variant, allocation, assignment kind and minute come from the rows
every write keeps current (:mod:`serve_app.event_rollup`), so reading them grows with the
number of minutes, not of predictions; the statistics work on those
(:mod:`serve_app.aggregates`). The first version loaded every row: 1.05 s at 10^5 stored
predictions, and it stopped counting at 200,000. What needs rows reads a bounded recent
sample (latency percentiles, label delays, drift) or only the shadow rows (paired scores).
"""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import BaseModel

from raysplit.core.events import AssignmentKind
from serve_app.aggregates import Cell, Epoch, EpochUnits, ExperimentAggregates, PairedCell
from serve_app.event_schema import BUCKET_S, allocations, cells, feedback, predictions, units

RECENT_SAMPLE = 2000  # rows per variant for latency percentiles, and label delays


class VariantFacts(BaseModel):
    """What the report shows about a variant beyond the aggregates."""

    model_versions: list[str]
    recent_latency_ms: list[float]
    agreement: tuple[int, int] | None = None  # shadows: (agreed with live, compared)


def _bucket(column: sa.ColumnElement, bucket_s: float) -> sa.ColumnElement:
    return sa.func.floor(column / bucket_s)


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def _sum(condition: sa.ColumnElement[bool], value: sa.ColumnElement) -> sa.ColumnElement:
    return sa.func.sum(sa.case((condition, value), else_=0.0))


class ExperimentQueries:
    """The report's reads of one experiment, against one engine."""

    def __init__(self, engine: sa.Engine, experiment: str, classification: bool):
        self.engine = engine
        self.experiment = experiment
        self.classification = classification
        self.bucket_s = BUCKET_S

    def aggregates(self, control: str | None) -> ExperimentAggregates:
        with self.engine.connect() as conn:
            epochs, numbers = self._epochs(conn)
            return ExperimentAggregates(
                experiment=self.experiment,
                classification=self.classification,
                control=control,
                bucket_s=self.bucket_s,
                cells=self._cells(conn, numbers),
                epochs=epochs,
                units=self._units(conn, numbers),
                paired=self._paired(conn, numbers),
                label_delay_s=self._label_delays(conn),
            )

    def _epochs(self, conn: sa.Connection) -> tuple[list[Epoch], dict[str, int]]:
        """The experiment's allocations in the order replicas first served them: epochs
        1, 2, ...; rows from before allocations were recorded are epoch 0."""
        rows = conn.execute(
            sa.select(allocations.c.key, allocations.c.shares, allocations.c.started_at)
            .where(allocations.c.experiment == self.experiment)
            .order_by(allocations.c.started_at, allocations.c.id)
        ).all()
        epochs = [
            Epoch(epoch=i, shares=row.shares, started_at=row.started_at)
            for i, row in enumerate(rows, start=1)
        ]
        return epochs, {"": 0} | {row.key: i for i, row in enumerate(rows, start=1)}

    @staticmethod
    def _epoch(numbers: dict[str, int], key: str) -> int:
        # an allocation not written yet (its rows raced ahead of it) counts on its own
        return numbers.setdefault(key, max(numbers.values()) + 1)

    def _cells(self, conn: sa.Connection, numbers: dict[str, int]) -> list[Cell]:
        """The rollup's rows of this experiment, summed over model versions."""
        c = cells
        counters = [
            "requests",
            "errors",
            "log_latency_sum",
            "log_latency_sq",
            "labelled",
            "correct",
            "abs_error_sum",
            "abs_error_sq",
        ]
        query = (
            sa.select(
                c.c.variant,
                c.c.allocation,
                c.c.assignment,
                c.c.bucket,
                *(sa.func.sum(c.c[name]).label(name) for name in counters),
            )
            .where(c.c.experiment == self.experiment)
            .group_by(c.c.variant, c.c.allocation, c.c.assignment, c.c.bucket)
        )
        return [
            Cell(
                variant=row.variant,
                epoch=self._epoch(numbers, row.allocation),
                assignment=AssignmentKind(row.assignment),
                bucket=row.bucket,
                **{name: getattr(row, name) for name in counters},
            )
            for row in conn.execute(query)
        ]

    def _units(self, conn: sa.Connection, numbers: dict[str, int]) -> list[EpochUnits]:
        query = (
            sa.select(units.c.variant, units.c.allocation, sa.func.count().label("n"))
            .where(units.c.experiment == self.experiment)
            .group_by(units.c.variant, units.c.allocation)
        )
        return [
            EpochUnits(variant=r.variant, epoch=self._epoch(numbers, r.allocation), units=r.n)
            for r in conn.execute(query)
        ]

    def _paired(self, conn: sa.Connection, numbers: dict[str, int]) -> list[PairedCell]:
        """Each shadow against the live answer to the same labelled requests."""
        s, live, f = predictions.alias("s"), predictions.alias("l"), feedback
        labelled = sa.and_(
            live.c.predicted.is_not(None), s.c.predicted.is_not(None), f.c.label_text.is_not(None)
        )
        live_right = live.c.predicted == f.c.label_text
        shadow_right = s.c.predicted == f.c.label_text
        diff = sa.func.abs(s.c.predicted_value - f.c.value) - sa.func.abs(
            live.c.predicted_value - f.c.value
        )
        regression = sa.and_(
            live.c.predicted_value.is_not(None),
            s.c.predicted_value.is_not(None),
            f.c.value.is_not(None),
        )
        pairs = labelled if self.classification else regression
        bucket = _bucket(live.c.created_at, self.bucket_s).label("bucket")
        query = (
            sa.select(
                s.c.variant,
                live.c.allocation,
                bucket,
                _count(pairs).label("pairs"),
                _count(sa.and_(labelled, live_right, shadow_right)).label("both"),
                _count(sa.and_(labelled, live_right, sa.not_(shadow_right))).label("live_only"),
                _count(sa.and_(labelled, sa.not_(live_right), shadow_right)).label("shadow_only"),
                _count(sa.and_(labelled, sa.not_(live_right), sa.not_(shadow_right))).label(
                    "neither"
                ),
                _sum(regression, diff).label("diff_sum"),
                _sum(regression, diff * diff).label("diff_sq"),
            )
            .select_from(
                s.join(
                    live,
                    sa.and_(
                        live.c.request_id == s.c.request_id,
                        live.c.shadow.is_(False),
                        live.c.outcome == "ok",
                    ),
                ).join(f, f.c.request_id == s.c.request_id)
            )
            .where(s.c.experiment == self.experiment, s.c.shadow.is_(True), s.c.outcome == "ok")
            .group_by(s.c.variant, live.c.allocation, bucket)
        )
        return [
            PairedCell(
                shadow=r.variant,
                epoch=self._epoch(numbers, r.allocation),
                bucket=int(r.bucket),
                pairs=r.pairs or 0,
                both_correct=r.both or 0,
                live_only=r.live_only or 0,
                shadow_only=r.shadow_only or 0,
                neither=r.neither or 0,
                diff_sum=r.diff_sum or 0.0,
                diff_sq=r.diff_sq or 0.0,
            )
            for r in conn.execute(query)
        ]

    def _label_delays(self, conn: sa.Connection) -> list[float]:
        p, f = predictions, feedback
        query = (
            sa.select((f.c.created_at - p.c.created_at).label("delay"))
            .select_from(p.join(f, f.c.request_id == p.c.request_id))
            .where(p.c.experiment == self.experiment, p.c.shadow.is_(False))
            .order_by(f.c.created_at.desc())
            .limit(RECENT_SAMPLE)
        )
        return [max(0.0, float(d)) for (d,) in conn.execute(query)]

    def variant_facts(self) -> dict[str, VariantFacts]:
        """Versions that answered, a recent latency sample, and shadow agreement."""
        p = predictions
        with self.engine.connect() as conn:
            versions: dict[str, set[str]] = {}
            for variant, version in conn.execute(
                sa.select(cells.c.variant, cells.c.model_version)
                .where(cells.c.experiment == self.experiment)
                .distinct()
            ):
                versions.setdefault(variant, set()).add(str(version))
            facts = {}
            for variant in versions:
                latency = conn.execute(
                    sa.select(p.c.latency_ms)
                    .where(
                        p.c.experiment == self.experiment,
                        p.c.variant == variant,
                        p.c.outcome == "ok",
                    )
                    .order_by(p.c.id.desc())
                    .limit(RECENT_SAMPLE)
                ).scalars()
                facts[variant] = VariantFacts(
                    model_versions=sorted(versions[variant]), recent_latency_ms=list(latency)
                )
            for variant, agreed, compared in self._agreement(conn):
                facts[variant].agreement = (agreed or 0, compared)
        return facts

    def _agreement(self, conn: sa.Connection) -> list[tuple[str, int, int]]:
        s, live = predictions.alias("s"), predictions.alias("l")
        query = (
            sa.select(
                s.c.variant,
                _count(s.c.predicted == live.c.predicted),
                sa.func.count(),
            )
            .select_from(
                s.join(
                    live,
                    sa.and_(live.c.request_id == s.c.request_id, live.c.shadow.is_(False)),
                )
            )
            .where(
                s.c.experiment == self.experiment,
                s.c.shadow.is_(True),
                s.c.predicted.is_not(None),
                live.c.predicted.is_not(None),
            )
            .group_by(s.c.variant)
        )
        return [tuple(row) for row in conn.execute(query)]
