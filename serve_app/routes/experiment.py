"""The experiment as the event store holds it: variants, history, report, summary, and the
feedback that scores it."""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from serve_app import feedback as feedback_desk
from serve_app.api import api
from serve_app.experiment_view import experiment_report
from serve_app.report import ExperimentReport
from serve_app.routes.base import Replica
from serve_app.schemas import parse_feedback, parse_json
from serve_app.summary import MetricsSummary, summarize

MAX_HISTORY = 2000


class ExperimentRoutes(Replica):
    @api.get("/models", summary="Variants, weights, resolved versions and load state")
    async def models(self):
        state = self._state
        variants = []
        if state is not None:
            shares = state.router.expected_shares()
            for v in state.config.variants:
                model = state.models[v.name]
                variants.append(
                    {
                        **v.model_dump(),
                        "share": shares.get(v.name, 0.0),
                        "model": {"name": model.resolved.name, "version": model.resolved.version},
                        "resolved_uri": model.resolved.uri,
                        "loaded": True,
                    }
                )
        return {
            "experiment": state.config.experiment if state else None,
            "deploy": await asyncio.to_thread(self.deploy_status),
            "control": state.config.control_variant if state else None,
            "sticky_key": state.config.sticky_key if state else None,
            "features": state.features if state else [],
            "variants": variants,
            "last_reconfigure": self._last_reconfigure,
            "events": self._events.stats().model_dump(),
            "replica": self._replica,
        }

    @api.get("/predictions/history", summary="Recent predictions from the event store")
    async def history(
        self, variant: str | None = None, limit: int = 100, shadow: bool | None = None
    ):
        store = await self.store()
        rows = await asyncio.to_thread(
            store.recent_predictions, max(1, min(limit, MAX_HISTORY)), variant, shadow
        )
        return {"predictions": rows, "events": self._events.stats().model_dump()}

    async def report(self, experiment: str | None = None) -> ExperimentReport:
        state = self.serving()
        store = await self.store()
        name = experiment or state.config.experiment
        return await asyncio.to_thread(experiment_report, store, state, name)

    @api.get("/experiment", summary="The live A/B report", response_model=ExperimentReport)
    async def experiment(self, experiment: str | None = None):
        report = await self.report(experiment)
        report.events = self._events.stats().model_dump()
        return report

    @api.get(
        "/metrics/summary",
        summary="Requests, errors and latency per variant over a recent window",
        response_model=MetricsSummary,
    )
    async def metrics_summary(self, window_s: float = 300.0):
        state = self.serving()
        store = await self.store()
        window_s = min(max(window_s, 1.0), 7 * 86400.0)
        rows = await asyncio.to_thread(
            store.recent_outcomes, state.config.experiment, time.time() - window_s
        )
        return summarize(state.config.experiment, window_s, rows, self._events.stats().model_dump())

    @api.post(
        "/feedback",
        summary="Ground truth for earlier predictions (idempotent)",
        response_model=feedback_desk.FeedbackReceipt,
    )
    async def feedback(self, request: Request):
        items = parse_feedback(parse_json(await request.body()))
        return await feedback_desk.receive(items, await self.store(), self._events)
