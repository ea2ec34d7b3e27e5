"""Prediction and feedback events for the event-store and writer tests, and what a
deployment's store holds of them."""

from __future__ import annotations

import random
import time
from typing import Any

import sqlalchemy as sa

from raysplit.core.events import FeedbackEvent, Judgement, PredictionEvent


def prediction(
    request_id: str,
    variant: str = "champion",
    shadow: bool = False,
    experiment: str = "iris-ab",
    **fields: Any,
) -> PredictionEvent:
    values: dict[str, Any] = {
        "request_id": request_id,
        "experiment": experiment,
        "variant": variant,
        "model_name": "iris",
        "model_version": "1",
        "shadow": shadow,
        "inputs": [[5.1, 3.5, 1.4, 0.2]],
        "predictions": ["setosa"],
        "probabilities": [[0.9, 0.1, 0.0]],
        "latency_ms": 0.4,
        "created_at": time.time(),
    }
    return PredictionEvent(**{**values, **fields})


def feedback(
    request_id: str,
    label: Any = "setosa",
    judgement: Judgement | None = None,
    at: float = 1.0,
    covariate: float | None = None,
) -> FeedbackEvent:
    return FeedbackEvent(
        request_id=request_id, created_at=at, label=label, judgement=judgement, covariate=covariate
    )


def stored_ids(engine: sa.Engine, pattern: str, expected: set[str], timeout: float) -> set[str]:
    """Request ids matching ``pattern`` (SQL LIKE) with a stored live prediction: asks until
    ``expected`` are all there or ``timeout`` passes, then returns what is. The wait is for
    the writers' next flush (or SQLite's reader), not for anything the test asserts."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            found = set(
                conn.execute(
                    sa.text(
                        "SELECT request_id FROM raysplit_predictions"
                        " WHERE request_id LIKE :p AND NOT shadow"
                    ),
                    {"p": pattern},
                ).scalars()
            )
        if expected <= found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def write_in_random_batches(url: str, mine: list, seed: int, largest: int) -> None:
    """One writer process (a replica): its share of the events, in random batch sizes of
    1 to ``largest``, so concurrent writers' batches interleave as replicas' flushes do."""
    from raysplit.eventstore.store import EventStore

    rng = random.Random(seed)
    store = EventStore(url)
    while mine:
        size = rng.randint(1, largest)
        store.write(mine[:size])
        del mine[:size]
    store.dispose()


def write_concurrently(url: str, events: list, largest: int) -> None:
    """``events`` dealt to four writer processes (replicas) that write their share at the
    same time in random batches; fails naming a writer that did not finish cleanly."""
    import multiprocessing

    from raysplit.eventstore.store import EventStore

    EventStore(url).dispose()  # migrate once, then four writers
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=write_in_random_batches, args=(url, events[i::4], i, largest))
        for i in range(4)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
        assert w.exitcode == 0, f"a writer failed (exit code {w.exitcode})"
