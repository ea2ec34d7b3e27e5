"""Ground truth arriving for earlier predictions: matched to the live prediction it
answers (in the store or still queued) and queued as an event.

The Prometheus counters are bumped by the event writer once the store has taken the
feedback as new (see :class:`serve_app.events.buffer.EventBuffer`), so a client that
retries, or posts the same feedback to two replicas, is counted once, as it is stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysplit.core.errors import describe_validation_error
from raysplit.core.events import FeedbackEvent, Judgement, check_request_id
from raysplit.eventstore.store import EventStore
from serve_app.config.constants import MAX_FEEDBACK
from serve_app.config.errors import InvalidRequest, NotReady
from serve_app.events.buffer import EventBuffer


class FeedbackItem(BaseModel):
    """Ground truth for one prediction: ``label`` for classifiers, ``value`` for regressors;
    ``replace`` corrects a label already stored (the report's counts move with it)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    label: str | int | bool | None = None
    value: float | None = Field(None, allow_inf_nan=False)
    replace: bool = Field(
        False, description="true corrects the label stored for this request (a repeat is ignored)"
    )

    @field_validator("request_id")
    @classmethod
    def _storable(cls, request_id: str) -> str:
        return check_request_id(request_id)

    @field_validator("replace", mode="before")
    @classmethod
    def _json_boolean(cls, replace: Any) -> bool:
        """Only JSON's own true/false: pydantic would read "yes" or 0 as a boolean, and a
        correction overwrites a stored label, so a typo must not ask for one."""
        if not isinstance(replace, bool):
            raise ValueError(f"must be JSON true or false, not {replace!r}")
        return replace

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackItem:
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of label (classification) or value (regression)")
        return self


def parse_feedback(payload: Any) -> list[FeedbackItem]:
    """One ``{request_id, label|value[, replace]}`` object or a list of them."""
    batch = isinstance(payload, list)
    raw = payload if batch else [payload]
    if not raw:
        raise InvalidRequest("feedback list is empty")
    if len(raw) > MAX_FEEDBACK:
        raise InvalidRequest(f"{len(raw)} feedback items exceed the limit of {MAX_FEEDBACK}")
    items = []
    for index, item in enumerate(raw):
        try:
            items.append(FeedbackItem.model_validate(item))
        except ValidationError as exc:
            where = f"feedback[{index}]" if batch else "feedback"
            raise InvalidRequest(describe_validation_error(exc, where)) from exc
    return items


class RefusedFeedback(BaseModel):
    request_id: str
    detail: str


class FeedbackReceipt(BaseModel):
    accepted: int
    unknown_request_ids: list[str]
    refused: list[RefusedFeedback] = Field(
        [], description="items not taken (422 each): a label the model cannot have given"
    )


Classes = Callable[[str, str], "list[Any] | Unknown | None"]


class Unknown:
    """A prediction of an experiment this replica does not serve: its classes are not known
    here, so its feedback is taken as it comes."""


UNKNOWN = Unknown()


def label_problem(item: FeedbackItem, classes: list[Any] | Unknown | None) -> str | None:
    """Why ``item`` cannot score a prediction of a model with ``classes`` (None: a
    regressor), or None. A label is compared as the model reads it, as text: ``0`` and
    ``"0"`` agree, ``"class_0"`` does not. A stored label of another vocabulary would turn
    the report's accuracy into nonsense, and nothing can take it back out."""
    if isinstance(classes, Unknown):
        return None
    if classes is None:
        if item.value is None:
            return "the experiment's models are regressors: send a numeric 'value', not a label"
        return None
    names = [str(c) for c in classes]
    if item.label is None:
        return f"the experiment's models are classifiers: send a 'label', one of {', '.join(names)}"
    if str(item.label) not in names:
        return f"label {item.label!r} is not one of the model's classes: {', '.join(names)}"
    return None


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


Answered = dict[str, tuple[str, str, list[Any], list[list[float]]]]
Covariates = Callable[[Answered], dict[str, float]]


async def receive(
    items: list[FeedbackItem],
    store: EventStore,
    events: EventBuffer,
    classes: Classes = lambda _experiment, _variant: UNKNOWN,
    covariates: Covariates = lambda _answered: {},
) -> FeedbackReceipt:
    """Match each item to the prediction it answers and queue it; an item whose label the
    prediction's model cannot have given is refused (and the rest taken). Raises
    :class:`InvalidRequest` (422) when every known item was refused. ``covariates`` gives
    each answered request its covariate (computed in a worker thread: it runs a model)."""
    ids = {i.request_id for i in items}
    try:
        stored = await asyncio.to_thread(store.live_predictions, ids)
    except sa.exc.OperationalError as exc:  # the database is down or unreachable
        # feedback must be matched to its prediction to be scored: take none of it, and
        # say so in a way clients retry on, rather than a bare 500
        raise NotReady(
            "the event store is unreachable, so no feedback was accepted; retry later"
        ) from exc
    found: Answered = {
        rid: (row["experiment"], row["variant"], row["predictions"], row["inputs"])
        for rid, row in stored.items()
    }
    for rid, event in events.pending_predictions(ids - found.keys()).items():
        found[rid] = (event.experiment, event.variant, event.predictions, event.inputs)
    covariate = await asyncio.to_thread(covariates, found) if found else {}
    now = time.time()
    accepted, refused = 0, []
    for item in items:
        prediction = found.get(item.request_id)
        if prediction is not None and (problem := label_problem(item, classes(*prediction[:2]))):
            refused.append(RefusedFeedback(request_id=item.request_id, detail=problem))
            continue
        accepted += events.add_feedback(
            FeedbackEvent(
                request_id=item.request_id,
                created_at=now,
                label=item.label,
                value=item.value,
                judgement=None if prediction is None else judge(*prediction[:3], item),
                covariate=covariate.get(item.request_id),
                replace=item.replace,
            )
        )
    unknown = sorted(ids - found.keys())
    if refused and not accepted and not unknown:
        raise InvalidRequest("; ".join(f"{r.request_id}: {r.detail}" for r in refused[:5]))
    return FeedbackReceipt(accepted=accepted, unknown_request_ids=unknown, refused=refused)
