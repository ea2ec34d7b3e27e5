"""The one place serving errors become HTTP responses.

Prediction routes answer errors as ``{"detail": ...}`` like FastAPI; the Open Inference
Protocol routes (``/v2/...``) answer ``{"error": ...}`` as that protocol specifies.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from serve_app.config.errors import ServingError
from serve_app.http import guard
from serve_app.http.responses import JSONResponse

OIP_PREFIX = "/v2/"


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    key = "error" if guard.app_path(request.scope).startswith(OIP_PREFIX) else "detail"
    return JSONResponse({key: message}, status_code=status, headers=headers)


async def serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    # through the module: Serve ships the ingress by value (see serve_app.http.guard)
    if exc.before_model and guard.SETTINGS.on_reject is not None:
        guard.SETTINGS.on_reject(exc.status)
    retry = getattr(exc, "retry_after_s", None)
    headers = {"Retry-After": str(retry)} if retry else None
    return error_response(request, exc.status, str(exc), headers)


def install(api: FastAPI) -> None:
    api.add_exception_handler(ServingError, serving_error)
