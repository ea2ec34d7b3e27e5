"""Liveness and readiness, for load balancers and Kubernetes probes."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.replica.base import ReplicaDep

router = APIRouter()


@router.get("/healthz", summary="The replica process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="An experiment is loaded and can answer")
async def readyz(replica: ReplicaDep):
    return {"status": "ready", "experiment": replica.serving().config.experiment}
