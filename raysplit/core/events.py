"""The prediction and feedback events: what serving records and what training (retraining
from production feedback) and the experiment report read back.

They are plain slotted dataclasses, not pydantic models: one is built on every request,
from values the request schemas and the model already validated, so a second validation
would only add cost to the hot path. Their fields are the event store's columns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from enum import StrEnum
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


class AssignmentKind(StrEnum):
    """How a request reached its variant; the experiment report compares only ``split``
    and ``sticky`` traffic, the only kinds the weights decide."""

    SPLIT = "split"  # a uniform draw against the weights
    STICKY = "sticky"  # the hash of the user's key against the weights
    FORCED = "forced"  # X-Variant (or an OIP variant name): reported on its own line
    SHADOW = "shadow"  # a copy to a shadow variant


# what the weights decide, and so all an experiment compares (forced and shadow traffic never)
RANDOMISED = (AssignmentKind.SPLIT, AssignmentKind.STICKY)


def unit_hash(key: str, experiment: str, salt: str) -> str:
    """What the store keeps of a sticky user's key: a salted hash, never the key itself,
    enough to count distinct users per variant."""
    digest = hashlib.blake2b(key.encode(), digest_size=12, salt=b"raysplit-unit")
    digest.update(f"\x00{experiment}\x00{salt}".encode())
    return digest.hexdigest()


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
    assignment: AssignmentKind = AssignmentKind.SPLIT
    allocation: str = ""  # the allocation's key (see AllocationEvent); "" before v4
    unit_hash: str | None = None  # sticky requests only

    def row(self) -> dict[str, Any]:
        # not dataclasses.asdict: it deep-copies the inputs of every row
        row = {name: getattr(self, name) for name in _PREDICTION_COLUMNS}
        row["predicted"], row["predicted_value"] = scored_prediction(self.predictions)
        return row


def scored_prediction(predictions: list[Any]) -> tuple[str | None, float | None]:
    """What feedback is compared with, as columns the database can compare: the single
    prediction as text (classes) and as a number (regression). A multi-row prediction has
    one label for many rows and is never scored."""
    if len(predictions) != 1:
        return None, None
    value = predictions[0]
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        number = float(value)
    return str(value), number


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
    regressors. ``judgement`` and ``replace`` are not stored; the judgement is known when
    the prediction was found."""

    request_id: str
    created_at: float
    label: str | int | bool | None = None
    value: float | None = None
    judgement: Judgement | None = None
    # the experiment's control model's confidence in its own answer to the request's row,
    # the same whichever arm answered: a covariate that reduces the comparison's variance
    covariate: float | None = None
    # a correction: overwrite a stored label (and move the report's counts with it) instead
    # of being ignored as a repeat; not a column (raysplit.eventstore.corrections)
    replace: bool = False

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "label": self.label,
            "label_text": None if self.label is None else str(self.label),
            "value": self.value,
            "covariate": self.covariate,
        }


@dataclass(slots=True, frozen=True)
class AllocationEvent:
    """A replica started serving an allocation (live variants, weights, salt): the store
    keeps the first time any replica did, and numbers the experiment's epochs from it."""

    experiment: str
    key: str
    shares: dict[str, float]
    created_at: float

    def row(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "key": self.key,
            "shares": self.shares,
            "started_at": self.created_at,
        }


Event = PredictionEvent | FeedbackEvent | AllocationEvent
