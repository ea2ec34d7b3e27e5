"""The experiment's results page (``GET /ui``): static HTML, CSS and JavaScript shipped in
the package (:mod:`serve_app.ui_static`), so it works offline, with nothing but the ingress.

The page draws what the JSON routes answer (``/experiment``, ``/experiment/timeline``,
``/experiments``, ``/models``, ``/rollout``) and computes no figure of its own. It asks
for them with URLs relative to itself, so it works at any route prefix (``/diabetes/ui``).
Like every route but the health probes and the docs it needs an admin key when keys are
on; a browser sends one as the password of HTTP Basic (:func:`serve_app.http.auth.presented_key`).
``GET /ui/links`` adds what only the replica's environment knows: where the Ray dashboard
and the MLflow UI are, and each variant's registry version and run.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib import resources
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, Field

from raysplit.core.settings import Locations
from serve_app.predict.state import ServingState
from serve_app.replica.base import ReplicaDep

router = APIRouter()

ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
NO_STORE = {"Cache-Control": "no-cache"}  # a redeployed page is fetched again


@cache
def _asset(name: str) -> bytes:
    return resources.files("serve_app.http").joinpath("ui_static", name).read_bytes()


@router.get("/ui", include_in_schema=False, response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"), headers=NO_STORE)


class VariantLinks(BaseModel):
    variant: str
    model: str
    version: str | None
    run_id: str | None = Field(description="the MLflow run that logged this version")
    model_url: str | None = Field(description="the version's page in the MLflow UI")
    run_url: str | None


class UiLinks(BaseModel):
    ray_dashboard: str = Field(description="RAYSPLIT_DASHBOARD_URL, else the local default")
    mlflow_ui: str | None = Field(description="the tracking server, when MLflow is one")
    variants: list[VariantLinks]


def _links(state: ServingState | None) -> UiLinks:
    """Blocking (one registry read per variant): run it in a worker thread."""
    locations = Locations.resolve()
    tracking = locations.mlflow_tracking_uri
    base = tracking.rstrip("/") if tracking.startswith(("http://", "https://")) else None
    client = MlflowClient() if state is not None else None
    variants = []
    for variant in state.config.variants if state is not None else []:
        resolved = state.models[variant.name].resolved
        run_id = experiment_id = None
        if client is not None and resolved.version is not None:
            try:
                run_id = client.get_model_version(resolved.name, resolved.version).run_id
                experiment_id = client.get_run(run_id).info.experiment_id if run_id else None
            except Exception:  # the registry is down: the page shows the version without links
                run_id = None
        variants.append(
            VariantLinks(
                variant=variant.name,
                model=resolved.name,
                version=resolved.version,
                run_id=run_id,
                model_url=f"{base}/#/models/{resolved.name}/versions/{resolved.version}"
                if base and resolved.version
                else None,
                run_url=f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
                if base and run_id and experiment_id
                else None,
            )
        )
    return UiLinks(ray_dashboard=locations.ray_dashboard_url, mlflow_ui=base, variants=variants)


@router.get(
    "/ui/links",
    summary="The results page's links: Ray dashboard, MLflow UI, each variant's version and run",
    response_model=UiLinks,
)
async def links(replica: ReplicaDep) -> UiLinks:
    return await asyncio.to_thread(_links, replica.state)


@router.get("/ui/{asset}", include_in_schema=False)
async def asset(asset: Literal["app.js", "app.css"]) -> Response:
    return Response(_asset(asset), media_type=ASSETS[asset], headers=NO_STORE)
