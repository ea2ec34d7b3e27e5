"""One replica's prediction pipeline, free of Ray: assign a variant, call its model, record
the event, and copy the request to the shadow variants.

The model call is handed in: in a replica it is Ray Serve's ``@serve.batch`` method, in a
unit test any coroutine (for example :func:`direct_call`). Everything else here is plain
asyncio, so the pipeline is tested in milliseconds without a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from raysplit.core.events import MAX_ERROR, AssignmentKind, PredictionEvent, unit_hash
from serve_app.config.errors import PredictionFailed
from serve_app.events.buffer import EventBuffer
from serve_app.predict.batching import JobResult, PredictionJob, run_jobs
from serve_app.predict.models import LoadedModel
from serve_app.predict.routing import Assignment
from serve_app.predict.state import ServingState
from serve_app.predict.tally import MetricTally

logger = logging.getLogger("ray.serve")

ModelCall = Callable[[PredictionJob], Awaitable[JobResult]]


async def direct_call(job: PredictionJob) -> JobResult:
    """A model call without batching: the job alone, in a worker thread."""
    (result,) = await asyncio.to_thread(run_jobs, [job])
    return result


@dataclass(frozen=True)
class Prediction:
    """What answered a request and what it said."""

    request_id: str
    assignment: Assignment
    model: LoadedModel
    predictions: list[Any]
    probabilities: list[list[float]] | None
    event: str | None  # with durable_events: "stored" or "queued" when the answer left


class Predictor:
    def __init__(
        self,
        model_call: ModelCall,
        events: EventBuffer,
        tally: MetricTally,
        draw: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._model_call = model_call
        self._events = events
        self._tally = tally
        self._draw = draw or random.Random().random
        self._clock = clock
        self._shadows: set[asyncio.Task] = set()

    async def predict(
        self,
        state: ServingState,
        rows: np.ndarray,
        request_id: str,
        sticky_key: str | None,
        forced: str | None,
    ) -> Prediction:
        """Answer one request with the variant the split assigns (or the one forced).

        A model failure is recorded as an error event of the assigned variant and raised
        as :class:`PredictionFailed`; routing errors are raised before any model runs.
        """
        assignment = state.router.assign(sticky_key, forced, self._draw())
        model = state.models[assignment.variant]
        result = await self._model_call(PredictionJob(model, rows))
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {result.error}"[:MAX_ERROR]
        unit = None
        if assignment.kind is AssignmentKind.STICKY and sticky_key:
            unit = unit_hash(sticky_key, state.config.experiment, state.config.salt)
        ticket = self._record(
            state, request_id, assignment.variant, model, rows, result, error, assignment.kind, unit
        )
        if error is not None:  # counted against the variant, answered with a 500
            logger.error(
                "variant %s failed on request %s: %s", assignment.variant, request_id, error
            )
            raise PredictionFailed(
                f"variant '{assignment.variant}' ({model.resolved.uri}) failed to predict: {error}"
            )
        predictions, probabilities = result.output
        if state.config.shadows:
            self._shadow(state, request_id, rows, predictions)
        event = None
        if state.config.durable_events and state.config.record_events:
            stored = await self._events.stored(ticket, state.config.durable_timeout_s)
            event = "stored" if stored else "queued"
        return Prediction(request_id, assignment, model, predictions, probabilities, event)

    def _record(
        self,
        state: ServingState,
        request_id: str,
        variant: str,
        model: LoadedModel,
        rows: np.ndarray,
        result: JobResult,
        error: str | None,
        kind: AssignmentKind,
        unit: str | None = None,
    ) -> int | None:
        """Count the answer and queue its event; the database write happens off the
        request path. Returns the event's ticket (``None``: not recorded or dropped)."""
        predictions, probabilities = result.output if result.output else (None, None)
        shadow = kind is AssignmentKind.SHADOW
        if not shadow:
            self._tally.prediction(
                state.config.experiment,
                variant,
                model.resolved.version,
                result.latency_ms,
                predictions,
                model.classes,
            )
        if not state.config.record_events:
            return None
        return self._events.add_prediction(
            PredictionEvent(
                request_id=request_id,
                experiment=state.config.experiment,
                variant=variant,
                model_name=model.resolved.name,
                model_version=model.resolved.version,
                shadow=shadow,
                inputs=rows.tolist(),
                predictions=[] if predictions is None else predictions,
                probabilities=probabilities,
                latency_ms=result.latency_ms,
                created_at=self._clock(),
                outcome="ok" if error is None else "error",
                error=error,
                assignment=kind,
                allocation=state.allocation.key,
                unit_hash=unit,
            )
        )

    def _shadow(
        self, state: ServingState, request_id: str, rows: np.ndarray, answered: list[Any]
    ) -> None:
        """Give each shadow variant a copy of the request after the response is sent."""

        async def run() -> None:
            await asyncio.sleep(0)  # let the live response go first
            for variant in state.config.shadows:
                model = state.models[variant.name]
                result = await self._model_call(PredictionJob(model, rows))
                if result.output is None:  # a shadow must never hurt the live path
                    logger.error("shadow variant %s failed: %s", variant.name, result.error)
                    continue
                self._record(
                    state,
                    request_id,
                    variant.name,
                    model,
                    rows,
                    result,
                    None,
                    AssignmentKind.SHADOW,
                )
                self._tally.shadow(
                    state.config.experiment, variant.name, result.output[0] == answered
                )

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def settle(self) -> None:
        """Wait for the shadow copies still running (tests, graceful shutdown)."""
        while self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
