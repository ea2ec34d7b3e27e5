"""The hot routes straight to their handlers, past FastAPI's routing and dependencies.

``POST /predict`` is most of the traffic, and FastAPI spends per request what a route with
dependencies needs: matching every route's pattern in turn, an exit stack for dependency
clean-up, solving the dependency tree. The handler needs none of it: it takes the replica
and the request and returns a finished response. This plain ASGI middleware, the innermost
one (so the key check, cross-site refusals and the request log still wrap it), calls the
same handler function FastAPI has registered, and turns a serving error into the same
response FastAPI's handler would (:mod:`serve_app.http.errors`). Every other request,
and every other method on these paths (a ``GET /predict`` still answers 405), goes to
FastAPI, which also keeps documenting the hot routes in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serve_app.config.errors import ServingError
from serve_app.http.errors import serving_error
from serve_app.http.guard import app_path
from serve_app.replica.base import Replica, current_replica

Handler = Callable[[Replica, Request], Awaitable[Response]]


class FastLane:
    def __init__(self, app: Any, routes: dict[str, Handler]) -> None:
        self.app = app
        self.routes = routes  # POST path within the application -> its route function

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(app_path(scope))
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(await current_replica(), request)
        except ServingError as exc:
            response = await serving_error(request, exc)
        await response(scope, receive, send)
