"""Corrected labels (feedback with ``replace``) on real SQLite and PostgreSQL: the stored
label is overwritten and every rollup the report reads (cells, per-user units, shadow
pairs, CUPED's covariate sums) moves by exactly the old judgement out and the new one in,
so it always equals a recount of the stored rows."""

from __future__ import annotations

import random
from typing import Any

import pytest
import sqlalchemy as sa

from raysplit.core.events import AssignmentKind, FeedbackEvent
from raysplit.eventstore.migrations import cells_from_rows, pairs_from_rows, units_from_rows
from raysplit.eventstore.schema import cells, feedback, pairs, units
from raysplit.eventstore.store import EventStore
from tests.events import prediction, write_concurrently

pytestmark = pytest.mark.integration

STICKY, SHADOW = AssignmentKind.STICKY, AssignmentKind.SHADOW


def label(
    rid: str, text: Any, replace: bool = False, covariate: float | None = None
) -> FeedbackEvent:
    return FeedbackEvent(
        request_id=rid, created_at=5.0, label=text, covariate=covariate, replace=replace
    )


def value(rid: str, number: float, replace: bool = False) -> FeedbackEvent:
    return FeedbackEvent(request_id=rid, created_at=5.0, value=number, replace=replace)


def assert_rollups_equal_a_recount(store: EventStore) -> None:
    """Every rollup row equals the aggregate of the stored rows it stands for."""
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
                assert kept[key] == pytest.approx(values, abs=1e-9), (table.name, key)


def champion_counts(store: EventStore) -> tuple[int, int]:
    """(labelled, correct) of the champion's randomised traffic, as the report reads them."""
    result = store.queries("iris-ab", classification=True).aggregates(control="champion")
    counted = [c for c in result.cells if c.variant == "champion" and c.assignment != SHADOW]
    return sum(c.labelled for c in counted), sum(c.correct for c in counted)


def unit_counts(store: EventStore, unit: str) -> tuple[float, float, float]:
    """(labelled, correct, cov_n) of one sticky user's rollup row."""
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(units.c.labelled, units.c.correct, units.c.cov_n).where(
                units.c.unit_hash == unit
            )
        ).one()
    return tuple(row)


def stored_label(store: EventStore, rid: str) -> tuple[Any, ...]:
    f = feedback
    with store.engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.select(f.c.label, f.c.label_text, f.c.value, f.c.covariate).where(
                    f.c.request_id == rid
                )
            ).one()
        )


def test_a_corrected_label_moves_every_count_by_exactly_one_request(store_url: str) -> None:
    """Issue 38: a client that sent a wrong label can correct it. The champion's correct
    count and the sticky user's sums move by one request; labelled counts stay."""
    store = EventStore(store_url)
    store.write(
        [
            prediction("a", created_at=100.0),  # predicts setosa
            prediction("b", created_at=100.0),
            prediction("a", "shadow-hgb", shadow=True, assignment=SHADOW, created_at=100.0),
            prediction("s", assignment=STICKY, unit_hash="u1", created_at=100.0),
            label("a", "setosa", covariate=0.9),
            label("b", "virginica"),
            label("s", "setosa", covariate=0.8),
        ]
    )
    assert champion_counts(store) == (3, 2)
    assert unit_counts(store, "u1") == (1, 1, 1)

    new = store.write([label("a", "virginica", replace=True, covariate=0.9)])
    assert new == set()  # a correction is not a new label (Prometheus counted the first)
    assert champion_counts(store) == (3, 1)
    assert stored_label(store, "a") == ("virginica", "virginica", None, 0.9)
    store.write([label("s", "virginica", replace=True)])  # no covariate: the stored one stays
    assert champion_counts(store) == (3, 0)
    assert unit_counts(store, "u1") == (1, 0, 1)
    assert stored_label(store, "s")[3] == 0.8
    assert_rollups_equal_a_recount(store)
    store.dispose()


def test_a_plain_repeat_is_ignored_and_the_same_label_changes_nothing(store_url: str) -> None:
    store = EventStore(store_url)
    store.write([prediction("a", created_at=100.0), label("a", "setosa")])
    store.write([label("a", "virginica")])  # no replace: ignored as today
    assert champion_counts(store) == (1, 1)
    assert stored_label(store, "a")[1] == "setosa"
    with store.engine.connect() as conn:
        before = conn.execute(sa.select(cells)).all()
    store.write([label("a", "setosa", replace=True, covariate=0.5)])  # the label it has
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(cells)).all() == before
    assert stored_label(store, "a") == ("setosa", "setosa", None, None)
    assert_rollups_equal_a_recount(store)
    store.dispose()


def test_replacing_twice_and_back_again_counts_the_last_label_once(store_url: str) -> None:
    store = EventStore(store_url)
    store.write(
        [
            prediction("a", created_at=100.0),
            prediction("a", "shadow-hgb", shadow=True, assignment=SHADOW, created_at=100.0),
            label("a", "setosa"),
        ]
    )
    for text in ("virginica", "versicolor", "setosa", "virginica"):
        store.write([label("a", text, replace=True, covariate=0.3)])
        assert champion_counts(store) == (1, int(text == "setosa")), text
        assert_rollups_equal_a_recount(store)
    # a label and its corrections in one batch (within one flush interval): the last wins
    store.write(
        [label("a", "setosa", replace=True), label("a", "versicolor"), label("a", "virginica")]
    )
    assert champion_counts(store) == (1, 1)
    assert stored_label(store, "a")[1] == "setosa"
    assert_rollups_equal_a_recount(store)
    store.dispose()


def test_a_correction_before_its_prediction_is_scored_when_it_arrives(store_url: str) -> None:
    """Label first, its correction, then the prediction: scored once, with the correction;
    a correction of a request never labelled is its first label (and counted as new)."""
    store = EventStore(store_url)
    assert store.write([label("a", "virginica")]) == {"a"}
    assert store.write([label("a", "setosa", replace=True)]) == set()
    assert store.write([label("b", "setosa", replace=True)]) == {"b"}  # nothing stored yet
    store.write([prediction("a", created_at=100.0), prediction("b", created_at=100.0)])
    assert champion_counts(store) == (2, 2)
    # a prediction and a correction of its label in one write
    store.write([prediction("c", created_at=100.0), label("c", "virginica")])
    store.write([prediction("d", created_at=100.0), label("d", "virginica")])
    store.write(
        [
            prediction("c", "shadow-hgb", shadow=True, assignment=SHADOW, created_at=100.0),
            label("c", "setosa", replace=True),
            label("d", "setosa", replace=True),
            prediction("e", created_at=100.0),
            label("e", "virginica"),
            label("e", "setosa", replace=True),
        ]
    )
    assert champion_counts(store) == (5, 5)
    # a label first, then its prediction and the label's correction in one write
    store.write([label("f", "virginica")])
    store.write([prediction("f", created_at=100.0), label("f", "setosa", replace=True)])
    assert champion_counts(store) == (6, 6)
    assert_rollups_equal_a_recount(store)
    store.dispose()


def test_a_corrected_value_moves_the_absolute_errors(store_url: str) -> None:
    store = EventStore(store_url)
    store.write(
        [
            prediction("r1", predictions=[10.0], created_at=0.0),
            prediction("r2", predictions=[20.0], created_at=1.0),
            prediction("r1", "shadow", shadow=True, assignment=SHADOW, predictions=[12.0]),
            value("r1", 13.0),
            value("r2", 18.0),
        ]
    )
    store.write([value("r1", 11.0, replace=True), value("r2", 18.0, replace=True)])
    result = store.queries("iris-ab", False).aggregates("champion")
    live = [c for c in result.cells if c.variant == "champion"]
    assert sum(c.labelled for c in live) == 2
    assert sum(c.abs_error_sum for c in live) == pytest.approx(1.0 + 2.0)
    assert sum(c.abs_error_sq for c in live) == pytest.approx(1.0 + 4.0)
    assert stored_label(store, "r1") == (None, None, 11.0, None)
    assert_rollups_equal_a_recount(store)
    store.dispose()


def test_concurrent_corrections_keep_every_rollup_equal_to_a_recount(store_url: str) -> None:
    """Four writer processes (replicas) write predictions, shadows, sticky users, labels,
    values and many corrections of the same requests, in random order and batches: every
    rollup must equal the recount of the rows, so each judgement was taken out and put in
    exactly once however the corrections interleaved."""
    rng = random.Random(38)
    events: list = []
    classes = ["setosa", "versicolor", "virginica"]
    for i in range(60):
        rid, sticky = f"r{i}", rng.random() < 0.4
        events.append(
            prediction(
                rid,
                rng.choice(["champion", "challenger"]),
                assignment=STICKY if sticky else AssignmentKind.SPLIT,
                unit_hash=f"u{rng.randrange(8)}" if sticky else None,
                predictions=[rng.choice(classes)],
                created_at=1000.0 + rng.uniform(0, 300),
            )
        )
        if rng.random() < 0.5:
            events.append(
                prediction(
                    rid, "shadow-hgb", shadow=True, assignment=SHADOW, predictions=[classes[0]]
                )
            )
        for _ in range(rng.randint(1, 6)):  # a first label, repeats and corrections
            covariate = rng.random() if rng.random() < 0.5 else None
            events.append(label(rid, rng.choice(classes), rng.random() < 0.7, covariate))
    for i in range(20):  # a regressor's requests, values corrected
        rid = f"v{i}"
        events.append(prediction(rid, experiment="reg", predictions=[rng.uniform(0, 10)]))
        events.append(
            prediction(
                rid,
                "shadow",
                shadow=True,
                experiment="reg",
                assignment=SHADOW,
                predictions=[rng.uniform(0, 10)],
            )
        )
        events += [value(rid, rng.uniform(0, 10), rng.random() < 0.8) for _ in range(4)]
    rng.shuffle(events)  # labels and corrections often land before their prediction
    write_concurrently(store_url, events, 12)
    store = EventStore(store_url)
    assert_rollups_equal_a_recount(store)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() == 80
    store.dispose()
