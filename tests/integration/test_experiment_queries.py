"""The report's aggregates, computed by real SQLite and PostgreSQL: counts and sums per
variant, epoch, assignment kind and time bucket, distinct sticky users, shadow pairs."""

from __future__ import annotations

import math
import random

import pytest
import sqlalchemy as sa

from raysplit.core.events import AllocationEvent, AssignmentKind, FeedbackEvent
from raysplit.eventstore.migrations import cells_from_rows, pairs_from_rows, units_from_rows
from raysplit.eventstore.schema import cells, pairs, units
from raysplit.eventstore.store import EventStore
from tests.events import feedback, prediction, write_concurrently

pytestmark = pytest.mark.integration

SPLIT, STICKY, FORCED, SHADOW = (
    AssignmentKind.SPLIT,
    AssignmentKind.STICKY,
    AssignmentKind.FORCED,
    AssignmentKind.SHADOW,
)


def test_aggregates_count_what_was_stored(store_url: str) -> None:
    store = EventStore(store_url)
    first = AllocationEvent("iris-ab", "k1", {"champion": 0.9, "challenger": 0.1}, 100.0)
    second = AllocationEvent("iris-ab", "k2", {"champion": 0.5, "challenger": 0.5}, 200.0)
    events: list = [second, first]  # written out of order: epochs follow started_at

    def add(rid, variant, kind, at, allocation, predicted="setosa", **extra):
        events.append(
            prediction(
                rid,
                variant,
                shadow=kind is SHADOW,
                assignment=kind,
                allocation=allocation,
                created_at=at,
                predictions=[predicted],
                latency_ms=math.e,
                **extra,
            )
        )

    add("a", "champion", SPLIT, 110.0, "k1")
    add("b", "champion", SPLIT, 170.0, "k1", predicted="virginica")  # wrong
    add("c", "challenger", STICKY, 120.0, "k1", unit_hash="u1")
    add("d", "challenger", STICKY, 130.0, "k1", unit_hash="u1")  # same user
    add("e", "challenger", STICKY, 140.0, "k1", unit_hash="u2")
    add("f", "challenger", FORCED, 210.0, "k2")
    add("g", "champion", SPLIT, 220.0, "k2", outcome="error", error="boom")
    add("a", "shadow-hgb", SHADOW, 110.0, "k1")
    add("b", "shadow-hgb", SHADOW, 170.0, "k1")  # right where the live one was wrong
    add("old", "champion", SPLIT, 50.0, "")  # written before v4: epoch 0
    events += [feedback(r, "setosa") for r in ("a", "b", "c", "f", "g")]
    store.write(events)

    queries = store.queries("iris-ab", classification=True)
    result = queries.aggregates(control="champion")
    assert [(e.epoch, e.shares["champion"]) for e in result.epochs] == [(1, 0.9), (2, 0.5)]
    cells = {(c.variant, c.epoch, c.assignment, c.bucket): c for c in result.cells}
    assert set(cells) == {
        ("champion", 1, SPLIT, 1),
        ("champion", 1, SPLIT, 2),
        ("challenger", 1, STICKY, 2),
        ("challenger", 2, FORCED, 3),
        ("champion", 2, SPLIT, 3),
        ("shadow-hgb", 1, SHADOW, 1),
        ("shadow-hgb", 1, SHADOW, 2),
        ("champion", 0, SPLIT, 0),
    }
    a, b = cells["champion", 1, SPLIT, 1], cells["champion", 1, SPLIT, 2]
    assert (a.requests, a.labelled, a.correct) == (1, 1, 1)
    assert (b.requests, b.labelled, b.correct) == (1, 1, 0)
    sticky = cells["challenger", 1, STICKY, 2]
    assert (sticky.requests, sticky.labelled, sticky.correct) == (3, 1, 1)
    assert sticky.log_latency_sum == pytest.approx(3.0)  # ln(e) per answered request
    assert sticky.log_latency_sq == pytest.approx(3.0)
    failed = cells["champion", 2, SPLIT, 3]
    assert (failed.requests, failed.errors, failed.labelled) == (1, 1, 0)
    assert [(u.variant, u.epoch, u.units) for u in result.units] == [("challenger", 1, 2)]
    paired = {(p.shadow, p.bucket): p for p in result.paired}
    assert (paired["shadow-hgb", 1].pairs, paired["shadow-hgb", 1].both_correct) == (1, 1)
    assert (paired["shadow-hgb", 2].pairs, paired["shadow-hgb", 2].shadow_only) == (1, 1)
    assert len(result.label_delay_s) == 5
    facts = queries.variant_facts()
    assert facts["shadow-hgb"].agreement == (1, 2)
    assert facts["champion"].model_versions == ["1"]
    assert facts["champion"].recent_latency_ms == pytest.approx([math.e] * 3)
    store.dispose()


def test_regression_sums_absolute_errors(store_url: str) -> None:
    store = EventStore(store_url)
    store.write(
        [
            prediction("r1", predictions=[10.0], created_at=0.0),
            prediction("r2", predictions=[20.0], created_at=1.0),
            prediction("r3", predictions=[1.0, 2.0], created_at=2.0),  # a batch: not scored
        ]
    )
    store.write(
        [
            FeedbackEvent(request_id=r, created_at=5.0, value=v)
            for r, v in (("r1", 13.0), ("r2", 18.0), ("r3", 0.0))
        ]
    )
    result = store.queries("iris-ab", False).aggregates("champion")
    (cell,) = result.cells
    assert (cell.requests, cell.labelled) == (3, 2)
    assert cell.abs_error_sum == pytest.approx(5.0)
    assert cell.abs_error_sq == pytest.approx(13.0)
    store.dispose()


def test_the_rollup_equals_a_recount_of_every_row(store_url: str) -> None:
    """Four writer processes (replicas) write predictions, shadows, errors, repeats and
    feedback (some before its prediction, some for unknown requests) in random batches at
    the same time, holding locks only on their own request ids: the rollup each write keeps
    must equal the aggregate of every stored row, so every label is scored exactly once."""
    rng = random.Random(7)
    events: list = []
    for i in range(400):
        kind = rng.choice([SPLIT, SPLIT, STICKY, FORCED])
        variant = rng.choice(["champion", "challenger"])
        at = 1000.0 + rng.uniform(0, 600)
        outcome = "error" if rng.random() < 0.05 else "ok"
        events.append(
            prediction(
                f"r{i}",
                variant,
                assignment=kind,
                allocation=rng.choice(["k1", "k2"]),
                unit_hash=f"u{rng.randrange(30)}" if kind is STICKY else None,
                created_at=at,
                predictions=[rng.choice(["setosa", "virginica"])],
                latency_ms=rng.uniform(0.1, 20),
                outcome=outcome,
                model_version=rng.choice(["1", "2"]),
            )
        )
        if rng.random() < 0.3:
            events.append(
                prediction(
                    f"r{i}",
                    "shadow-hgb",
                    shadow=True,
                    assignment=SHADOW,
                    predictions=[rng.choice(["setosa", "virginica"])],
                    outcome="error" if rng.random() < 0.05 else "ok",
                )
            )
        if rng.random() < 0.7:  # some with the control's confidence as a covariate
            covariate = rng.random() if rng.random() < 0.6 else None
            events.append(
                feedback(f"r{i}", rng.choice(["setosa", "virginica"]), covariate=covariate)
            )
    events += [feedback(f"unknown{i}") for i in range(20)]
    events += rng.sample(events, 100)  # retries
    rng.shuffle(events)  # feedback often lands before its prediction
    write_concurrently(store_url, events, 40)
    store = EventStore(store_url)
    with store.engine.connect() as conn:
        for table, recount_query, keys in (
            (cells, cells_from_rows(), 6),
            (pairs, pairs_from_rows(), 4),
            (units, units_from_rows(), 4),
        ):
            kept = {tuple(r[:keys]): tuple(r[keys:]) for r in conn.execute(sa.select(table))}
            recount = {tuple(r[:keys]): tuple(r[keys:]) for r in conn.execute(recount_query)}
            assert kept.keys() == recount.keys(), table.name
            for key, values in recount.items():
                assert kept[key] == pytest.approx(values), (table.name, key)
    assert kept  # the sticky users were there to count
    store.dispose()


def test_unit_moments_equal_sums_over_users_of_their_totals(store_url: str) -> None:
    """The per-user variance's inputs, read by one SQL self-join, against the same sums
    taken here user by user: a user who stays across two epochs, one a ramp moves from
    the control to the challenger, labelled and unlabelled, right and wrong requests."""
    store = EventStore(store_url)
    events: list = [
        AllocationEvent("iris-ab", "k1", {"champion": 0.9, "challenger": 0.1}, 100.0),
        AllocationEvent("iris-ab", "k2", {"champion": 0.5, "challenger": 0.5}, 200.0),
    ]
    served = [  # (request, user, variant, allocation, predicted, labelled)
        ("r1", "stay", "champion", "k1", "setosa", True),
        ("r2", "stay", "champion", "k1", "virginica", True),
        ("r3", "stay", "champion", "k2", "setosa", False),
        ("r4", "moved", "champion", "k1", "setosa", True),
        ("r5", "moved", "challenger", "k2", "virginica", True),
        ("r6", "moved", "challenger", "k2", "setosa", True),
        ("r7", "late", "challenger", "k2", "setosa", True),
    ]
    for rid, user, variant, allocation, predicted, labelled in served:
        events.append(
            prediction(
                rid,
                variant,
                assignment=STICKY,
                allocation=allocation,
                unit_hash=user,
                predictions=[predicted],
                created_at=150.0 if allocation == "k1" else 250.0,
            )
        )
        if labelled:
            events.append(feedback(rid, "setosa"))
    store.write(events)
    found = store.queries("iris-ab", classification=True).aggregates("champion").unit_moments
    epoch = {"k1": 1, "k2": 2}
    totals: dict[tuple[str, str, int], dict[str, float]] = {}
    for _rid, user, variant, allocation, predicted, labelled in served:
        t = totals.setdefault(
            (user, variant, epoch[allocation]),
            dict.fromkeys(("requests", "labelled", "correct"), 0.0),
        )
        t["requests"] += 1
        t["labelled"] += labelled
        t["correct"] += labelled and predicted == "setosa"
    expected: dict[tuple, dict[str, float]] = {}
    for (u1, v1, e1), t1 in totals.items():
        for (u2, v2, e2), t2 in totals.items():
            if u1 == u2:
                sums = expected.setdefault((v1, e1, v2, e2), {})
                for x, y in (
                    ("labelled", "correct"),
                    ("correct", "correct"),
                    ("requests", "requests"),
                ):
                    sums[f"{x}*{y}"] = sums.get(f"{x}*{y}", 0.0) + t1[x] * t2[y]
    got = {(m.variant, m.epoch, m.other_variant, m.other_epoch): m.products for m in found}
    assert got.keys() == expected.keys()
    for key, sums in expected.items():
        for name, value in sums.items():
            assert got[key][name] == pytest.approx(value), (key, name)
    # the mover is one user in two arms: their cross terms pair the control's epoch 1
    # with the challenger's epoch 2
    assert got[("champion", 1, "challenger", 2)]["labelled*correct"] == 1.0 * 1.0
    store.dispose()


def test_no_report_query_scans_the_users_once_per_user(tmp_path) -> None:
    """Every statement the report's aggregates send reads the per-user rollup at most once
    from end to end: the self-join on the user probes an index for the second side. It
    scanned all users for each user before (SQLite: 2.2 s a report at 5,000 users, so a
    lease holder's report loop grew with the square of the experiment's users)."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.write(
        [
            prediction(f"r{i}", "champion", assignment=STICKY, allocation="k1", unit_hash=f"u{i}")
            for i in range(20)
        ]
    )
    sent: list[tuple[str, tuple]] = []

    def keep(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", keep)
    store.queries("iris-ab", classification=True).aggregates("champion")
    sa.event.remove(store.engine, "before_cursor_execute", keep)
    joins = 0
    with store.engine.connect() as conn:
        for statement, parameters in sent:
            if statement.count("raysplit_units AS") < 2:
                continue  # not the self-join
            joins += 1
            plan = [
                row[-1]
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            ]
            # one side is read by experiment; the other must be found by the user
            assert any("unit_hash=?" in step for step in plan), plan
    assert joins >= 1  # the self-join was among the statements read
    store.dispose()
