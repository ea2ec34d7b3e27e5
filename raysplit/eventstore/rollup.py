"""The report's counts and sums, kept current by every event write.

Reading every prediction made the report grow with the experiment, even as one hash-join
``GROUP BY`` (docs/report_scaling.md). So each write adds what it changes to
``raysplit_cells`` (one row per experiment, variant, allocation, assignment, model version
and minute) in the same transaction, and the report reads only those rows.

A label scores its prediction once, whichever of the two is written second: new
predictions are matched with feedback already stored *before* this batch's feedback is
inserted, and new feedback with every prediction stored after. Writers lock the request
ids they write for the transaction (PostgreSQL: one advisory lock per request id; SQLite:
``BEGIN IMMEDIATE``), so two replicas writing a prediction and its feedback at the same
moment cannot both miss the other, and writers of different requests do not wait; the
rollups are commutative additions, upserted in key order.

A corrected label (feedback with ``replace``, :mod:`raysplit.eventstore.corrections`)
moves the rollups under the same locks: the stored label's score is added again with the
opposite sign to every prediction it had scored, and the new label's score added to every
prediction of the request, so each prediction stays scored by exactly one label.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from raysplit.core.events import RANDOMISED
from raysplit.eventstore.bulk import add_counts
from raysplit.eventstore.schema import (
    BUCKET_S,
    CELL_COUNTERS,
    PAIR_COUNTERS,
    SCORED_COLUMNS,
    cells,
    feedback,
    pairs,
    scoring_table,
    units,
)

MIN_LATENCY_MS = 0.001  # the log latency of anything faster is taken at this floor
CellKey = tuple[
    str, str, str, str, str, int
]  # experiment, variant, allocation, kind, version, bucket


Delta = dict[str, float]  # CELL_COUNTERS -> what one write adds
Label = tuple[str | None, float | None, float | None]  # label text, value, covariate


def new_delta() -> Delta:
    return dict.fromkeys(CELL_COUNTERS, 0)


def cell_key(row: Any) -> CellKey:
    """``row``: anything with a prediction's columns (an event's row dict or a DB row)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return (
        get("experiment"),
        get("variant"),
        get("allocation") or "",
        str(get("assignment")),
        str(get("model_version") or ""),
        math.floor(get("created_at") / BUCKET_S),
    )


def score(
    delta: Delta,
    prediction: Any,
    label_text: str | None,
    value: float | None,
    covariate: float | None = None,
    sign: int = 1,
) -> None:
    """Add one label's score to the cell of the answered prediction it labels, and, with a
    covariate, the sums CUPED's adjustment reads. ``sign=-1`` takes a score back out (a
    corrected label): the same terms, so a retraction cancels its addition exactly."""
    get = prediction.get if isinstance(prediction, dict) else lambda n: getattr(prediction, n)
    if get("outcome") != "ok":
        return
    predicted, predicted_value = get("predicted"), get("predicted_value")
    if label_text is not None and predicted is not None:
        outcome = float(predicted == label_text)
        delta["labelled"] += sign
        delta["correct"] += sign * int(outcome)
    elif value is not None and predicted_value is not None:
        outcome = abs(predicted_value - value)
        delta["labelled"] += sign
        delta["abs_error_sum"] += sign * outcome
        delta["abs_error_sq"] += sign * outcome * outcome
    else:
        return
    if covariate is not None:
        delta["cov_n"] += sign
        delta["cov_sum"] += sign * covariate
        delta["cov_sq"] += sign * covariate * covariate
        delta["cov_y"] += sign * covariate * outcome


def served(delta: Delta, prediction: dict[str, Any]) -> None:
    """Add one newly stored prediction's request, error or latency to its cell."""
    delta["requests"] += 1
    if prediction["outcome"] != "ok":
        delta["errors"] += 1
        return
    log_latency = math.log(max(prediction["latency_ms"], MIN_LATENCY_MS))
    delta["log_latency_sum"] += log_latency
    delta["log_latency_sq"] += log_latency * log_latency


def unit_key(row: Any) -> UnitKey | None:
    """The sticky unit a prediction counts for; None for every other assignment."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    if str(get("assignment")) != "sticky" or not get("unit_hash"):
        return None
    return (get("experiment"), get("allocation") or "", get("variant"), get("unit_hash"))


class Rollup:
    """The deltas of one write transaction, applied at its end: per cell, and per sticky
    unit (the same counters, since sticky traffic is analysed per user)."""

    def __init__(self) -> None:
        self.deltas: dict[CellKey, Delta] = defaultdict(new_delta)
        self.units: dict[UnitKey, Delta] = defaultdict(new_delta)

    def _deltas(self, row: Any) -> list[Delta]:
        unit = unit_key(row)
        return [self.deltas[cell_key(row)], *([self.units[unit]] if unit else [])]

    def add_predictions(self, rows: Iterable[dict[str, Any]], labels: dict[str, Label]) -> None:
        """Newly stored predictions, with the labels already stored for their requests."""
        for row in rows:
            for delta in self._deltas(row):
                served(delta, row)
                if row["request_id"] in labels:
                    score(delta, row, *labels[row["request_id"]])

    def add_labels(self, found: Iterable[Any], labels: dict[str, Label], sign: int = 1) -> None:
        """Newly stored feedback, with every stored prediction of its request; ``sign=-1``
        takes a replaced label's scores back out of the predictions it had scored."""
        for prediction in found:
            for delta in self._deltas(prediction):
                score(delta, prediction, *labels[prediction.request_id], sign=sign)

    def apply(self, conn: sa.Connection) -> None:
        for name, deltas, keys in (
            ("cells", self.deltas, CELL_KEY_COLUMNS),
            ("units", self.units, UNIT_KEY_COLUMNS),
        ):
            if deltas:
                # in key order: concurrent writers lock the rows they add to in one order
                rows = [dict(zip(keys, k, strict=True), **d) for k, d in sorted(deltas.items())]
                table, counters = ROLLUPS[name]
                add_counts(conn, table, rows, tuple(counters))


CELL_KEY_COLUMNS = ("experiment", "variant", "allocation", "assignment", "model_version", "bucket")
UNIT_KEY_COLUMNS = ("experiment", "allocation", "variant", "unit_hash")
UnitKey = tuple[str, str, str, str]  # experiment, allocation, variant, unit hash
ROLLUPS = {
    "cells": (cells, CELL_COUNTERS),
    "units": (units, CELL_COUNTERS),
    "pairs": (pairs, PAIR_COUNTERS),
}


PairKey = tuple[str, str, str, int]  # experiment, shadow, live allocation, live bucket


@dataclass
class PairState:
    """What the store holds for one request: its live answer, its shadows, its label."""

    live: Any = None
    shadows: dict[str, Any] | None = None
    label: tuple[str | None, float | None] | None = None

    def complete(self) -> tuple[set[str], set[str]]:
        """The shadows that can be compared with the live answer, and those of them whose
        comparison is also labelled."""
        live = self.live
        if live is None or live.outcome != "ok" or live.predicted is None:
            return set(), set()
        if live.assignment not in RANDOMISED:  # forced answers are never compared
            return set(), set()
        compared = {
            name
            for name, s in (self.shadows or {}).items()
            if s.outcome == "ok" and s.predicted is not None
        }
        if self.label is None:
            return compared, set()
        text, value = self.label
        labelled = {
            name
            for name in compared
            if text is not None
            or (
                value is not None
                and live.predicted_value is not None
                and self.shadows[name].predicted_value is not None
            )
        }
        return compared, labelled


@functools.cache
def stored_query(dialect: str) -> sa.Select:
    """Every stored prediction of a batch's requests with the request's label, if any.

    One read per write: the labels stored before this batch (to score its new
    predictions), the predictions its new feedback scores, and the shadows it completes
    a pair with all come from these rows. Built once: constructing the statement cost a
    writer more than executing it. PostgreSQL takes the ids as one array (``= ANY``): an
    expanded ``IN`` list is a new statement text that psycopg parses on every write.
    """
    p, f = scoring_table(dialect), feedback
    if dialect == "postgresql":
        matching = p.c.request_id == sa.func.any(
            sa.bindparam("ids", type_=postgresql.ARRAY(sa.String))
        )
    else:
        matching = p.c.request_id.in_(sa.bindparam("ids", expanding=True))
    return (
        sa.select(*(p.c[name] for name in SCORED_COLUMNS), f.c.label_text, f.c.value, f.c.covariate)
        .select_from(p.outerjoin(f, f.c.request_id == p.c.request_id))
        .where(matching)
    )


def pair_states(rows: Iterable[Any]) -> dict[str, PairState]:
    """The stored state of each request among ``rows`` (:func:`stored_query`'s)."""
    states: dict[str, PairState] = defaultdict(PairState)
    for row in rows:
        state = states[row.request_id]
        if row.shadow:
            state.shadows = {**(state.shadows or {}), row.variant: row}
        else:
            state.live = row
        if row.label_text is not None or row.value is not None:
            state.label = (row.label_text, row.value)
    return states


PairLabel = tuple[str | None, float | None]  # label text, value


def pair_deltas(
    after: dict[str, PairState],
    new_predictions: set[tuple[str, str]],
    new_labels: set[str],
    replaced: Mapping[str, PairLabel] | None = None,
) -> dict[PairKey, dict[str, float]]:
    """What one write adds to the pair rollup: every (request, shadow) comparison, and
    every labelled one, that is complete now and has a part this write stored (under the
    write lock, so it was not complete before).

    ``replaced``: the labels this write corrected (their requests are in ``new_labels``),
    as stored before it. A comparison that was complete before the write had been scored
    with that label, so its score comes back out; the new one goes in as for a new label.
    """
    replaced = replaced or {}
    deltas: dict[PairKey, dict[str, float]] = defaultdict(lambda: dict.fromkeys(PAIR_COUNTERS, 0))
    for rid, state in after.items():
        compared, labelled = state.complete()
        before = replaced.get(rid)
        labelled_before = dataclasses.replace(state, label=before).complete()[1] if before else ()
        live = state.live
        live_new = live is not None and (rid, live.variant) in new_predictions
        for name in compared:
            pair_new = live_new or (rid, name) in new_predictions
            label_now = name in labelled and (pair_new or rid in new_labels)
            retract = name in labelled_before and not pair_new
            if not (pair_new or label_now or retract):
                continue
            shadow = state.shadows[name]
            bucket = math.floor(live.created_at / BUCKET_S)
            delta = deltas[(live.experiment, name, live.allocation, bucket)]
            if pair_new:
                delta["compared"] += 1
                delta["agreed"] += int(shadow.predicted == live.predicted)
            if label_now:
                _score_pair(delta, live, shadow, *state.label)
            if retract:
                _score_pair(delta, live, shadow, *before, sign=-1)
    return deltas


def _score_pair(
    delta: dict[str, float],
    live: Any,
    shadow: Any,
    text: str | None,
    value: float | None,
    sign: int = 1,
) -> None:
    """McNemar's four counts (a label), or the paired difference of absolute errors;
    ``sign=-1`` takes a replaced label's counts back out."""
    if text is not None:
        right = (live.predicted == text, shadow.predicted == text)
        delta["labelled"] += sign
        delta[PAIR_CELLS[right]] += sign
        return
    diff = abs(shadow.predicted_value - value) - abs(live.predicted_value - value)
    delta["valued"] += sign
    delta["diff_sum"] += sign * diff
    delta["diff_sq"] += sign * diff * diff


# (live right, shadow right) -> the pair rollup's column
PAIR_CELLS = {
    (True, True): "both_correct",
    (True, False): "live_only",
    (False, True): "shadow_only",
    (False, False): "neither",
}


def apply_pairs(conn: sa.Connection, deltas: dict[PairKey, dict[str, float]]) -> None:
    if not deltas:
        return
    add_counts(
        conn,
        pairs,
        [
            {"experiment": k[0], "shadow": k[1], "allocation": k[2], "bucket": k[3], **d}
            for k, d in sorted(deltas.items())  # one lock order for every writer
        ],
        tuple(PAIR_COUNTERS),
    )
