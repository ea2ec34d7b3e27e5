"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

from serve_app.api import api
from serve_app.routes.base import Replica


class HealthRoutes(Replica):
    @api.get("/healthz", summary="The replica process is up")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz", summary="An experiment is loaded and can answer")
    async def readyz(self):
        return {"status": "ready", "experiment": self.serving().config.experiment}
