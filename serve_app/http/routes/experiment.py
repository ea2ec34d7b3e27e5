"""The experiment as the event store holds it: variants, history, report, summary, and the
feedback that scores it."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from fastapi import APIRouter, Request

from serve_app.config.constants import DEPLOY_STATUS_TIMEOUT_S, MAX_HISTORY, MAX_TIMELINE_POINTS
from serve_app.config.errors import InvalidRequest
from serve_app.events import feedback as feedback_desk
from serve_app.http.schemas import parse_json
from serve_app.predict.covariate import control_confidence
from serve_app.replica.base import Replica, ReplicaDep, acting_key
from serve_app.replica.reading import list_experiments, read_timeline
from serve_app.report.experiment import ExperimentReport
from serve_app.report.summary import MetricsSummary, summarize
from serve_app.report.timeline import ExperimentList, ExperimentTimeline
from serve_app.rollout.state import weights_differ

router = APIRouter()
logger = logging.getLogger("ray.serve")


async def serve_status(replica: Replica) -> dict[str, str]:
    """Serve's view of the last deploy, or UNKNOWN if its controller does not answer in
    time: the status call goes through the GCS, and while the GCS is down it hangs (a
    GCS restart took one such call 57 s), which must not take /models down with it."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(replica.serve_status), DEPLOY_STATUS_TIMEOUT_S
        )
    except TimeoutError:
        return {
            "status": "UNKNOWN",
            "message": f"Serve's controller did not answer within {DEPLOY_STATUS_TIMEOUT_S:g} s",
        }


@router.get("/models", summary="Variants, weights, resolved versions and load state")
async def models(replica: ReplicaDep):
    state = replica.state
    variants = []
    if state is not None:
        shares = state.router.expected_shares()
        configured = {v.name: v.weight for v in state.configured.variants}
        for v in state.config.variants:
            model = state.models[v.name]
            variants.append(
                {
                    **v.model_dump(),  # weight: the effective one
                    "configured_weight": configured[v.name],
                    "share": shares.get(v.name, 0.0),
                    "model": {"name": model.resolved.name, "version": model.resolved.version},
                    # the labels feedback may carry (None: a regressor); clients check theirs
                    "classes": model.classes,
                    "resolved_uri": model.resolved.uri,
                    # onnx or sklearn, and why (a verified conversion, or why not)
                    "runtime": model.runtime,
                    "runtime_reason": model.runtime_reason,
                    "loaded": True,
                }
            )
    return {
        "experiment": state.config.experiment if state else None,
        # what this replica did with the last config: APPLIED, or REFUSED and why, with
        # the config it serves instead (serve_app.predict.deploy_status)
        "deploy": replica.deploy.model_dump(mode="json"),
        "serve": await serve_status(replica),
        "control": state.config.control_variant if state else None,
        "sticky_key": state.config.sticky_key if state else None,
        "features": state.features if state else [],
        "variants": variants,
        # why `weight` differs from `configured_weight` (a rollout owns the split), or None
        "weights_differ": weights_differ(state.configured, state.rollout) if state else None,
        "events": replica.events.stats().model_dump(),
        "replica": replica.replica_id,
    }


@router.get("/predictions/history", summary="Recent predictions from the event store")
async def history(
    replica: ReplicaDep,
    variant: str | None = None,
    limit: int = 100,
    shadow: bool | None = None,
    experiment: str | None = None,
):
    """The served experiment's predictions (``?experiment=`` for another one): the event
    store is shared by every application on the cluster, each sees its own rows."""
    store = await replica.store()
    if experiment is None and replica.state is not None:
        experiment = replica.state.config.experiment
    rows = await asyncio.to_thread(
        store.recent_predictions, max(1, min(limit, MAX_HISTORY)), variant, shadow, experiment
    )
    return {"predictions": rows, "events": replica.events.stats().model_dump()}


@router.get("/experiment", summary="The live A/B report", response_model=ExperimentReport)
async def experiment(replica: ReplicaDep, experiment: str | None = None):
    report = await replica.report(experiment)
    report.events = replica.events.stats().model_dump()
    return report


@router.get(
    "/experiment/timeline",
    summary="The report at the end of each time bucket: intervals, shares, p-values, p95",
    response_model=ExperimentTimeline,
)
async def timeline(
    replica: ReplicaDep, experiment: str | None = None, points: int = MAX_TIMELINE_POINTS
):
    state = replica.serving()
    store = await replica.store()
    name = experiment or state.config.experiment
    points = max(1, min(points, MAX_TIMELINE_POINTS))
    return await asyncio.to_thread(read_timeline, store, state, name, points)


@router.get(
    "/experiments",
    summary="Every experiment the event store holds, the latest active first",
    response_model=ExperimentList,
)
async def experiments(replica: ReplicaDep):
    store = await replica.store()
    current = replica.state.config.experiment if replica.state is not None else None
    return await asyncio.to_thread(list_experiments, store, current)


@router.get(
    "/metrics/summary",
    summary="Requests, errors and latency per variant over a recent window",
    response_model=MetricsSummary,
)
async def metrics_summary(replica: ReplicaDep, window_s: float = 300.0):
    state = replica.serving()
    store = await replica.store()
    window_s = min(max(window_s, 1.0), 7 * 86400.0)
    rows = await asyncio.to_thread(
        store.recent_outcomes, state.config.experiment, time.time() - window_s
    )
    return summarize(state.config.experiment, window_s, rows, replica.events.stats().model_dump())


@router.post(
    "/feedback",
    summary="Ground truth for earlier predictions (idempotent)",
    response_model=feedback_desk.FeedbackReceipt,
)
async def feedback(replica: ReplicaDep, request: Request):
    items = feedback_desk.parse_feedback(parse_json(await request.body()))
    state = replica.serving()

    def classes(experiment: str, variant: str) -> list | feedback_desk.Unknown | None:
        model = state.models.get(variant) if experiment == state.config.experiment else None
        return feedback_desk.UNKNOWN if model is None else model.classes

    experiment, tally = state.config.experiment, replica.metrics.tally
    try:
        receipt = await feedback_desk.receive(
            items,
            await replica.store(),
            replica.events,
            classes,
            partial(control_confidence, state),
        )
    except InvalidRequest:
        tally.feedback_refused(experiment, len(items))
        raise
    tally.feedback_refused(experiment, len(receipt.refused))
    key = acting_key(request)
    logger.info(
        "feedback batch of %d from key %s", len(items), key, extra={"key": key, "items": len(items)}
    )
    return receipt
