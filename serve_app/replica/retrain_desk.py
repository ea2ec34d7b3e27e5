"""``POST /retrain`` and ``GET /retrain/{job_id}``: the ingress's side of retraining.

The ingress knows what a retrain of the served experiment needs by default (the control's
registered model, the served experiment's events), checks the events are there before
submitting, and hands the search to Ray's job API (:mod:`raysplit.core.retrain_jobs`);
the search itself runs in the job, never in a replica. It validates only what it can
without training code (serving does not import it): the job's driver validates the whole
config and reports a bad one as a failed job with the reason.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from raysplit.core.errors import RaysplitError
from raysplit.core.retrain_jobs import (
    RetrainConflict,
    RetrainJob,
    RetrainNotFound,
    job_client,
    retrain_status,
    submit_retrain,
)
from raysplit.eventstore.labelled import (
    DEFAULT_MIN_ROWS,
    EventQuery,
    count_labelled_events,
    require_rows,
    window_bounds,
)
from serve_app.config.errors import ServingError
from serve_app.predict.state import ServingState


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s keys replacing its own, mappings merged key by key."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def with_defaults(body: dict[str, Any], state: ServingState) -> dict[str, Any]:
    """The deployment's ``retrain`` config with ``body`` over it and what the serving side
    knows filled in: the control's registered model as ``register.model_name``, the served
    experiment's events.

    A deployment without a ``retrain`` config refuses (409): a retrain runs a search on the
    serving cluster, so what it may search is the operator's decision, made in the
    deployed config, not a request's.
    """
    if state.config.retrain is None:
        raise ServingError(
            "this deployment has no retrain config: add `retrain:` (a tune config) to the"
            " Ingress user_config to allow POST /retrain (docs/retraining.md)",
            409,
        )
    spec = merged(state.config.retrain, body)
    control = state.models[state.config.control_variant]
    register = spec.setdefault("register", {})
    dataset = spec.setdefault("dataset", {})
    if not isinstance(register, dict) or not isinstance(dataset, dict):
        raise ServingError("retrain config: 'register' and 'dataset' must be mappings", 422)
    register.setdefault("model_name", control.resolved.name)
    events = dataset.setdefault("events", {})
    if not isinstance(events, dict):
        raise ServingError("retrain config: 'dataset.events' must be a mapping", 422)
    events.setdefault("experiment", state.config.experiment)
    return spec


def check_events(spec: dict[str, Any], store_url: str, width: int) -> int:
    """How many labelled rows the retrain would learn from, counted by the database;
    refuses (422) a bad window, an unknown experiment or fewer than ``min_rows`` before
    anything is submitted. The job reads and checks the rows themselves."""
    events = spec["dataset"]["events"]
    try:
        since, until = window_bounds(
            *(None if events.get(k) is None else str(events[k]) for k in ("since", "until")),
            time.time(),
        )
        found = count_labelled_events(
            EventQuery(
                url=events.get("url") or store_url,
                experiment=str(events["experiment"]),
                until=until,
                width=width,
                since=since,
                lake=events.get("lake"),  # rows a prune moved there count too
            )
        )
        require_rows(found, int(events.get("min_rows", DEFAULT_MIN_ROWS)))
    except (RaysplitError, ValueError) as exc:
        raise ServingError(str(exc), 422) from exc
    return found.rows


@contextmanager
def _job_api() -> Iterator[None]:
    """Ray's job API refusals as HTTP statuses: a running retrain 409, an unknown job 404,
    an unreachable API 503."""
    try:
        yield
    except RetrainConflict as exc:
        raise ServingError(str(exc), 409) from exc
    except RetrainNotFound as exc:
        raise ServingError(str(exc), 404) from exc
    except RaysplitError as exc:
        raise ServingError(str(exc), 503) from exc


def submit(spec: dict[str, Any]) -> str:
    """Submit through the job API of the cluster this replica runs in."""
    with _job_api():
        return submit_retrain(job_client(), spec)


def status(job_id: str) -> RetrainJob:
    with _job_api():
        return retrain_status(job_client(), job_id)
