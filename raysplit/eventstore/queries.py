"""The experiment report's inputs, read from the event store's rollup.

Counts and sums per variant, allocation, assignment kind and minute come from the rows
every write keeps current (:mod:`raysplit.eventstore.rollup`), so reading them grows with the
number of minutes, not of predictions; the statistics work on those
(:mod:`raysplit.eventstore.aggregates`). The first version loaded every row and stopped
counting at 200,000 (docs/report_scaling.md). What needs rows reads a bounded recent
sample (latency percentiles, label delays, drift) or only the shadow rows (paired scores).
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from pydantic import BaseModel

from raysplit.core.events import AssignmentKind
from raysplit.eventstore.aggregates import (
    UNIT_PRODUCTS,
    Cell,
    Epoch,
    EpochUnits,
    ExperimentAggregates,
    PairedCell,
    UnitMoments,
)
from raysplit.eventstore.schema import (
    BUCKET_S,
    CELL_COUNTERS,
    allocations,
    cells,
    experiment_archive,
    feedback,
    pairs,
    predictions,
    scoring_table,
    units,
)

COUNTERS = tuple(CELL_COUNTERS)
PAIR_SCORES = ("both_correct", "live_only", "shadow_only", "neither", "diff_sum", "diff_sq")
MAX_LOOKS = 240  # time buckets the report reads, however long the experiment
RECENT_SAMPLE = 2000  # rows per variant for latency percentiles; labels for their delays
LABELS_SCANNED = 2 * RECENT_SAMPLE  # the newest labels of any experiment, for the delays


class VariantFacts(BaseModel):
    """What the report shows about a variant beyond the aggregates."""

    model_versions: list[str]
    recent_latency_ms: list[float]
    agreement: tuple[int, int] | None = None  # shadows: (agreed with live, compared)


def _total(table: sa.Table, name: str) -> sa.ColumnElement:
    return table.c.requests - table.c.errors if name == "answered" else table.c[name]


class ExperimentSpan(BaseModel):
    """An experiment the store holds: when its predictions began and ended, how many, how
    many of them are labelled, and whether it was archived (``raysplit experiments
    archive``: off the results page's list, still readable by name)."""

    experiment: str
    first_at: float
    last_at: float
    requests: int
    labelled: int = 0
    archived: bool = False


def experiment_spans(engine: sa.Engine) -> list[ExperimentSpan]:
    """Every experiment with a live (non-shadow) prediction, from the rollup."""
    c, a = cells, experiment_archive
    totals = (
        sa.select(
            c.c.experiment,
            sa.func.min(c.c.bucket).label("first"),
            sa.func.max(c.c.bucket).label("last"),
            sa.func.sum(c.c.requests).label("requests"),
            sa.func.sum(c.c.labelled).label("labelled"),
        )
        .where(c.c.assignment != "shadow")
        .group_by(c.c.experiment)
        .subquery()
    )
    query = sa.select(totals, a.c.archived_at).select_from(
        totals.outerjoin(a, a.c.experiment == totals.c.experiment)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        ExperimentSpan(
            experiment=row.experiment,
            first_at=row.first * BUCKET_S,
            last_at=(row.last + 1) * BUCKET_S,
            requests=int(row.requests or 0),
            labelled=int(row.labelled or 0),
            archived=row.archived_at is not None,
        )
        for row in rows
    ]


class ExperimentQueries:
    """The report's reads of one experiment, against one engine."""

    def __init__(self, engine: sa.Engine, experiment: str, classification: bool):
        self.engine = engine
        self.experiment = experiment
        self.classification = classification
        self.bucket_s = BUCKET_S
        self.minutes_per_bucket = 1

    def aggregates(self, control: str | None) -> ExperimentAggregates:
        with self.engine.connect() as conn:
            epochs, numbers = self._epochs(conn)
            return ExperimentAggregates(
                experiment=self.experiment,
                classification=self.classification,
                control=control,
                cells=self._cells(conn, numbers),  # sets minutes_per_bucket
                bucket_s=self.bucket_s * self.minutes_per_bucket,
                epochs=epochs,
                units=self._units(conn, numbers),
                unit_moments=self._unit_moments(conn, numbers),
                units_in_two_arms=self._units_in_two_arms(conn, numbers),
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
        """The rollup's rows of this experiment, summed over model versions and over
        minutes into at most ``MAX_LOOKS`` time buckets: the always-valid tests look at
        bucket boundaries, and a subset of looks keeps them valid, while the report's cost
        stays bounded however long the experiment runs."""
        c = cells
        first, last = conn.execute(
            sa.select(sa.func.min(c.c.bucket), sa.func.max(c.c.bucket)).where(
                c.c.experiment == self.experiment
            )
        ).one()
        if first is None:
            return []
        self.minutes_per_bucket = max(1, math.ceil((last - first + 1) / MAX_LOOKS))
        bucket = sa.func.floor(c.c.bucket / self.minutes_per_bucket).label("b")
        query = (
            sa.select(
                c.c.variant,
                c.c.allocation,
                c.c.assignment,
                bucket,
                *(sa.func.sum(c.c[name]).label(name) for name in COUNTERS),
            )
            .where(c.c.experiment == self.experiment)
            .group_by(c.c.variant, c.c.allocation, c.c.assignment, bucket)
        )
        return [
            Cell.model_construct(  # the database's sums: nothing to validate
                variant=variant,
                epoch=self._epoch(numbers, allocation),
                assignment=AssignmentKind(assignment),
                bucket=int(b),
                **dict(zip(COUNTERS, sums, strict=True)),
            )
            for variant, allocation, assignment, b, *sums in conn.execute(query)
        ]

    def _units(self, conn: sa.Connection, numbers: dict[str, int]) -> list[EpochUnits]:
        """Each sticky user once, in the (variant, epoch) of their first request: a user
        who stays across epochs is one draw, in the epoch whose shares drew them."""
        u, a = units, allocations
        started = (
            sa.select(u.c.unit_hash, u.c.variant, u.c.allocation, a.c.started_at, a.c.id)
            .select_from(
                u.outerjoin(a, sa.and_(a.c.experiment == u.c.experiment, a.c.key == u.c.allocation))
            )
            .where(u.c.experiment == self.experiment)
            .subquery()
        )
        rank = (
            sa.select(
                started.c.variant,
                started.c.allocation,
                sa.func.row_number()
                .over(
                    partition_by=started.c.unit_hash,
                    order_by=(
                        sa.func.coalesce(started.c.started_at, -1.0),
                        sa.func.coalesce(started.c.id, -1),
                        started.c.variant,
                    ),
                )
                .label("nth"),
            )
        ).subquery()
        query = (
            sa.select(rank.c.variant, rank.c.allocation, sa.func.count().label("n"))
            .where(rank.c.nth == 1)
            .group_by(rank.c.variant, rank.c.allocation)
        )
        return [
            EpochUnits(variant=r.variant, epoch=self._epoch(numbers, r.allocation), units=r.n)
            for r in conn.execute(query)
        ]

    def _units_in_two_arms(self, conn: sa.Connection, numbers: dict[str, int]) -> dict[int, int]:
        """Users a router served from two variants within one allocation: never correct."""
        u = units
        both = (
            sa.select(u.c.allocation)
            .where(u.c.experiment == self.experiment)
            .group_by(u.c.allocation, u.c.unit_hash)
            .having(sa.func.count(u.c.variant.distinct()) > 1)
            .subquery()
        )
        query = sa.select(both.c.allocation, sa.func.count()).group_by(both.c.allocation)
        return {self._epoch(numbers, key): n for key, n in conn.execute(query)}

    def _unit_moments(self, conn: sa.Connection, numbers: dict[str, int]) -> list[UnitMoments]:
        """Sums over users of products of their totals in two (variant, epoch) cells: one
        self-join of the units rollup on the user, grouped by both cells, so the cost grows
        with users x epochs, never with requests."""
        one, two = units.alias("one"), units.alias("two")
        products = {
            f"{x}*{y}": sa.func.sum(_total(one, x) * _total(two, y)) for x, y in UNIT_PRODUCTS
        }
        query = (
            sa.select(
                one.c.variant,
                one.c.allocation,
                two.c.variant.label("other_variant"),
                two.c.allocation.label("other_allocation"),
                sa.func.count().label("users"),
                *(value.label(name.replace("*", "__")) for name, value in products.items()),
            )
            .select_from(
                one.join(
                    two,
                    sa.and_(
                        two.c.experiment == one.c.experiment, two.c.unit_hash == one.c.unit_hash
                    ),
                )
            )
            .where(one.c.experiment == self.experiment)
            .group_by(one.c.variant, one.c.allocation, two.c.variant, two.c.allocation)
        )
        return [
            UnitMoments(
                variant=r.variant,
                epoch=self._epoch(numbers, r.allocation),
                other_variant=r.other_variant,
                other_epoch=self._epoch(numbers, r.other_allocation),
                users=r.users,
                products={n: float(r._mapping[n.replace("*", "__")] or 0.0) for n in products},
            )
            for r in conn.execute(query)
        ]

    def _paired(self, conn: sa.Connection, numbers: dict[str, int]) -> list[PairedCell]:
        """Each shadow against the live answer to the same labelled requests (rollup)."""
        q = pairs
        bucket = sa.func.floor(q.c.bucket / self.minutes_per_bucket).label("b")
        counters = ("labelled", "valued", *(PAIR_SCORES))
        query = (
            sa.select(
                q.c.shadow,
                q.c.allocation,
                bucket,
                *(sa.func.sum(q.c[name]).label(name) for name in counters),
            )
            .where(q.c.experiment == self.experiment)
            .group_by(q.c.shadow, q.c.allocation, bucket)
        )
        found = []
        for row in conn.execute(query):
            scores = {name: row._mapping[name] for name in PAIR_SCORES}
            found.append(
                PairedCell.model_construct(
                    shadow=row.shadow,
                    epoch=self._epoch(numbers, row.allocation),
                    bucket=int(row.b),
                    pairs=row.labelled if self.classification else row.valued,
                    **scores,
                )
            )
        return [cell for cell in found if cell.pairs]

    def _label_delays(self, conn: sa.Connection) -> list[float]:
        """Delays of the latest labels: the newest feedback first (its index), then their
        predictions by request id (one index probe each), so it reads a bounded number of
        rows however large the store. One statement: with the 4,000 ids sent back as a
        list, PostgreSQL's planner expected to match too many rows and scanned every key
        (63 ms at 10^6 predictions, against 10 ms for this join)."""
        p = scoring_table(conn.dialect.name)
        latest = (
            sa.select(feedback.c.request_id, feedback.c.created_at)
            .order_by(feedback.c.created_at.desc())
            .limit(LABELS_SCANNED)
            .subquery()
        )
        # the experiment is filtered here, not in SQL: with it in the WHERE clause SQLite
        # walks the experiment's index (every prediction) instead of the request ids
        answered = conn.execute(
            sa.select(latest.c.created_at - p.c.created_at, p.c.experiment, p.c.shadow)
            .select_from(latest.join(p, p.c.request_id == latest.c.request_id))
            .order_by(latest.c.created_at.desc())
        )
        delays = [
            max(0.0, delay)
            for delay, experiment, shadow in answered
            if experiment == self.experiment and not shadow
        ]
        return delays[:RECENT_SAMPLE]

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
                latency = conn.execute(self._recent_answers(variant, p.c.latency_ms)).scalars()
                facts[variant] = VariantFacts(
                    model_versions=sorted(versions[variant]), recent_latency_ms=list(latency)
                )
            for variant, agreed, compared in self._agreement(conn):
                facts[variant].agreement = (agreed or 0, compared)
        return facts

    def _recent_answers(self, variant: str, *columns: sa.ColumnElement) -> sa.Select:
        """A variant's newest answered predictions (the report's latency sample size)."""
        p = predictions
        return (
            sa.select(*columns)
            .where(p.c.experiment == self.experiment, p.c.variant == variant, p.c.outcome == "ok")
            .order_by(p.c.id.desc())
            .limit(RECENT_SAMPLE)
        )

    def recent_latencies(self) -> dict[str, list[tuple[float, float]]]:
        """Each variant's newest answers, with their times (the timeline's p95 points)."""
        p = predictions
        found: dict[str, list[tuple[float, float]]] = {}
        with self.engine.connect() as conn:
            names = conn.execute(
                sa.select(cells.c.variant).where(cells.c.experiment == self.experiment).distinct()
            ).scalars()
            for variant in list(names):
                rows = conn.execute(self._recent_answers(variant, p.c.created_at, p.c.latency_ms))
                found[variant] = [(float(at), float(ms)) for at, ms in rows]
        return found

    def _agreement(self, conn: sa.Connection) -> list[tuple[str, int, int]]:
        q = pairs
        query = (
            sa.select(q.c.shadow, sa.func.sum(q.c.agreed), sa.func.sum(q.c.compared))
            .where(q.c.experiment == self.experiment)
            .group_by(q.c.shadow)
        )
        return [tuple(row) for row in conn.execute(query)]
