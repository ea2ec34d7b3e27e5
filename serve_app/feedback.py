"""Ground truth arriving for earlier predictions: matched to the live prediction it
answers (in the store or still queued) and queued as an event.

The Prometheus counters are bumped by the event writer once the store has taken the
feedback as new (see :class:`serve_app.event_buffer.EventBuffer`), so a client that
retries, or posts the same feedback to two replicas, is counted once, as it is stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from raysplit.core.events import FeedbackEvent, Judgement
from serve_app.errors import NotReady
from serve_app.event_buffer import EventBuffer
from serve_app.event_store import EventStore
from serve_app.schemas import FeedbackItem


class FeedbackReceipt(BaseModel):
    accepted: int
    unknown_request_ids: list[str]


def judge(experiment: str, variant: str, predicted: list[Any], item: FeedbackItem) -> Judgement:
    """Online quality of one single-row prediction: correct or not, or the absolute error
    (multi-row predictions carry one label for many rows and are not scored)."""
    single = len(predicted) == 1
    correct = None
    if single and item.label is not None:
        correct = str(predicted[0]) == str(item.label)
    abs_error = None
    if single and item.value is not None:
        abs_error = abs(float(predicted[0]) - item.value)
    return Judgement(experiment, variant, correct, abs_error)


async def receive(
    items: list[FeedbackItem], store: EventStore, events: EventBuffer
) -> FeedbackReceipt:
    ids = {i.request_id for i in items}
    try:
        stored = await asyncio.to_thread(store.live_predictions, ids)
    except sa.exc.OperationalError as exc:  # the database is down or unreachable
        # feedback must be matched to its prediction to be scored: take none of it, and
        # say so in a way clients retry on, rather than a bare 500
        raise NotReady(
            "the event store is unreachable, so no feedback was accepted; retry later"
        ) from exc
    found: dict[str, tuple[str, str, list[Any]]] = {
        rid: (row["experiment"], row["variant"], row["predictions"]) for rid, row in stored.items()
    }
    for rid, event in events.pending_predictions(ids - found.keys()).items():
        found[rid] = (event.experiment, event.variant, event.predictions)
    now = time.time()
    accepted = 0
    for item in items:
        prediction = found.get(item.request_id)
        accepted += events.add_feedback(
            FeedbackEvent(
                request_id=item.request_id,
                created_at=now,
                label=item.label,
                value=item.value,
                judgement=None if prediction is None else judge(*prediction, item),
            )
        )
    return FeedbackReceipt(accepted=accepted, unknown_request_ids=sorted(ids - found.keys()))
