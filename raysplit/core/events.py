"""The prediction and feedback events: what serving records and what training (retraining
from production feedback) and the experiment report read back.

They are plain slotted dataclasses, not pydantic models: one is built on every request,
from values the request schemas and the model already validated, so a second validation
would only add cost to the hot path. Their fields are the event store's columns.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

# Limits the event store's columns hold; the ingress refuses ids beyond them at entry.
MAX_REQUEST_ID = 128
MAX_ERROR = 500


class InvalidRequestId(ValueError):
    """A request id the event store could not hold; the message says why."""


def check_request_id(request_id: str) -> str:
    """``request_id`` if it can key an event: 1 to 128 printable characters.

    PostgreSQL refuses longer ids and NUL bytes. Refusing them here, where they enter,
    turns what was a database error on a background write into a 400 the client can read.
    """
    if not request_id:
        raise InvalidRequestId("request id is empty")
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidRequestId(
            f"request id is {len(request_id)} characters long; the limit is {MAX_REQUEST_ID}"
        )
    if not request_id.isprintable():
        bad = next(c for c in request_id if not c.isprintable())
        raise InvalidRequestId(
            f"request id holds a non-printable character {bad!r}; use printable characters"
        )
    return request_id


@dataclass(slots=True, frozen=True)
class PredictionEvent:
    """One variant's answer (or failure) for one request; shadow answers included."""

    request_id: str
    experiment: str
    variant: str
    model_name: str
    model_version: str | None
    shadow: bool
    inputs: list[list[float]]
    predictions: list[Any]
    probabilities: list[list[float]] | None
    latency_ms: float
    created_at: float
    outcome: Literal["ok", "error"] = "ok"
    error: str | None = None

    def row(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies the inputs of every row
        return {name: getattr(self, name) for name in _PREDICTION_COLUMNS}


_PREDICTION_COLUMNS = tuple(f.name for f in fields(PredictionEvent))


@dataclass(slots=True, frozen=True)
class Judgement:
    """How the feedback scores the live prediction it answers: the Prometheus counters'
    figures, counted only once the feedback is really new in the store."""

    experiment: str
    variant: str
    correct: bool | None
    abs_error: float | None


@dataclass(slots=True, frozen=True)
class FeedbackEvent:
    """Ground truth for an earlier request: ``label`` for classifiers, ``value`` for
    regressors. ``judgement`` is not stored; it is known when the prediction was found."""

    request_id: str
    created_at: float
    label: str | int | bool | None = None
    value: float | None = None
    judgement: Judgement | None = None

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "label": self.label,
            "value": self.value,
        }


Event = PredictionEvent | FeedbackEvent
