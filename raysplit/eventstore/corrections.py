"""Corrected labels: feedback sent again with ``replace`` for a request already labelled.

Feedback is stored once per request id and a repeat is ignored, since clients retry and
post to several replicas. A client that finds its label was wrong says so explicitly
(``replace``), and the stored label is then overwritten in the same write transaction that
moves the rollups (:mod:`raysplit.eventstore.rollup`): the writer already holds the
request's lock (PostgreSQL: its advisory lock, and here the feedback row's own lock;
SQLite: ``BEGIN IMMEDIATE``), so the label read here is the one every stored prediction of
the request was scored with, and no other writer can score against it until this commits.

No column records that a label was corrected: the schema stays as it is, and what the
report needs (the old label's score out, the new one in) is known within the transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from raysplit.core.events import FeedbackEvent
from raysplit.eventstore.rollup import Label
from raysplit.eventstore.schema import feedback

Row = dict[str, Any]


def resolve_feedback(events: Iterable[FeedbackEvent]) -> tuple[list[Row], dict[str, Row]]:
    """One batch's feedback as the rows to insert and the replacements to apply.

    Read in order, per request id: a ``replace`` overrides what came before it and a plain
    repeat is ignored. So the row to insert for a request with no stored label is its last
    replacement, else its first item; a request with a stored label takes its last
    replacement, if it has one. One row per request id: a batch holding a label and its
    correction (a client correcting within one flush interval) stores the correction.
    """
    first: dict[str, Row] = {}
    last_replacement: dict[str, Row] = {}
    for event in events:
        row = event.row()
        first.setdefault(event.request_id, row)
        if event.replace:
            last_replacement[event.request_id] = row
    inserted = [last_replacement.get(rid, row) for rid, row in first.items()]
    return inserted, last_replacement


def replace_labels(conn: sa.Connection, replacements: Mapping[str, Row]) -> dict[str, Label]:
    """Overwrite the stored labels ``replacements`` change; return each changed request's
    label as it was stored (the one its predictions were scored with).

    Requests whose stored label equals the replacement (text and value) are left alone: a
    correction sent twice, or to two replicas, moves nothing the second time. The rows are
    read ``FOR UPDATE`` (PostgreSQL; SQLite's writer holds the database already) in request
    id order, the order every writer locks in. A replacement without a covariate keeps the
    stored one: the covariate describes the request's inputs, not its label.
    """
    if not replacements:
        return {}
    f = feedback
    stored = conn.execute(
        sa.select(f.c.request_id, f.c.label_text, f.c.value, f.c.covariate)
        .where(f.c.request_id.in_(sorted(replacements)))
        .order_by(f.c.request_id)
        .with_for_update()
    ).all()
    old: dict[str, Label] = {}
    updates = []
    for rid, label_text, value, covariate in stored:
        new = replacements[rid]
        if (new["label_text"], new["value"]) == (label_text, value):
            continue
        old[rid] = (label_text, value, covariate)
        updates.append(
            {
                "rid": rid,
                "new_label": new["label"],
                "new_text": new["label_text"],
                "new_value": new["value"],
                "new_covariate": new["covariate"],
            }
        )
    if updates:
        conn.execute(_update_statement(), updates)
    return old


@functools.cache  # built once: building a statement cost a writer more than running it
def _update_statement() -> sa.Update:
    f = feedback
    return (
        f.update()
        .where(f.c.request_id == sa.bindparam("rid"))
        .values(
            # a label replaced by a value is SQL NULL, as an inserted row's is, not JSON null
            label=sa.bindparam("new_label", type_=sa.JSON(none_as_null=True)),
            label_text=sa.bindparam("new_text"),
            value=sa.bindparam("new_value"),
            covariate=sa.func.coalesce(
                sa.bindparam("new_covariate", type_=f.c.covariate.type), f.c.covariate
            ),
        )
    )
