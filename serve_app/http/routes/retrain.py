"""Retraining from production feedback, for operators (admin scope): submit a retrain as
a Ray job, and follow it."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel

from raysplit.core.retrain_jobs import RetrainJob
from serve_app.replica import retrain_desk
from serve_app.replica.base import ReplicaDep, acting_key

router = APIRouter()
logger = logging.getLogger("ray.serve")


class RetrainSubmitted(BaseModel):
    job_id: str
    model: str
    experiment: str
    labelled_rows: int  # found when the job was submitted; the job reads them again


@router.post(
    "/retrain",
    summary="Retrain from the served experiment's labelled predictions, as a Ray job",
    response_model=RetrainSubmitted,
    status_code=202,
)
async def submit(
    replica: ReplicaDep,
    request: Request,
    config: Annotated[dict[str, Any] | None, Body()] = None,
):
    """The body is a tune config (docs/retraining.md) as JSON; ``register.model_name`` and
    ``dataset.events.experiment`` default to the control's model and the served experiment.
    The new version takes ``register.alias`` (default ``challenger``) only if it beats
    ``register.gate``'s aliases on the newest events."""
    state = replica.serving()
    store = await replica.store()
    spec = retrain_desk.with_defaults(config or {}, state)
    width = len(state.models[state.config.control_variant].features)
    rows = await asyncio.to_thread(retrain_desk.check_events, spec, store.url, width)
    job_id = await asyncio.to_thread(retrain_desk.submit, spec)
    key = acting_key(request)
    logger.info("retrain %s submitted by key %s", job_id, key, extra={"key": key, "job_id": job_id})
    return RetrainSubmitted(
        job_id=job_id,
        model=spec["register"]["model_name"],
        experiment=spec["dataset"]["events"]["experiment"],
        labelled_rows=rows,
    )


@router.get(
    "/retrain/{job_id}", summary="A retrain job's state and outcome", response_model=RetrainJob
)
async def job(
    job_id: Annotated[
        str, Path(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="from POST /retrain")
    ],
):
    return await asyncio.to_thread(retrain_desk.status, job_id)
