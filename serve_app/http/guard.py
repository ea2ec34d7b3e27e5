"""What every request must pass before an endpoint runs: its API key and its body's size.

All are answered here, as a plain ASGI middleware, so a rejected request costs no parsing
and no model time:

- a request that changes state from another site's page gets 403, and a body that is not
  declared JSON 415 (:mod:`serve_app.http.cross_site`), keys on or off;
- a key that is missing or unknown gets 401, a key without the route's scope 403
  (:mod:`serve_app.http.auth`; nothing is checked when no keys are configured); HTTP Basic
  credentials count on GET and HEAD only;
- a body whose ``Content-Length`` is over ``max_body_bytes`` gets 413 before one byte of
  it is read, and a chunked body as soon as it crosses the limit;
- a body still arriving ``body_timeout_s`` after the request began gets 408, so a slow
  client cannot hold one of a replica's request slots for as long as it likes.

The endpoints then read the buffered body as usual.

The settings live in this module's :data:`SETTINGS`, looked up on every request, and not
in the middleware's constructor arguments: ``@serve.ingress`` pickles the FastAPI app,
middleware arguments included, where the application is built, so anything passed there
would be the build process's (its environment has none of the replica's keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from serve_app.http.auth import (
    BASIC_REFUSED_MESSAGE,
    CHALLENGES,
    SAFE_METHODS,
    ApiKeys,
    basic_on_unsafe_method,
    presented_key,
    required_scope,
)
from serve_app.http.auth import Scope as KeyScope
from serve_app.http.cross_site import content_type_refusal, cross_site_refusal

Scope = dict[str, Any]
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass
class GuardSettings:
    """Limits the replica sets from its ``user_config`` on every ``reconfigure()``."""

    keys: ApiKeys = field(default_factory=ApiKeys)  # loaded by the replica from its env
    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 10.0
    on_reject: Callable[[int], None] | None = None  # counts refusals in the replica's metrics
    # what the audit trail hears: (key label or None, status, "METHOD /path") of every
    # request that presented a key or was refused for want of one
    on_key: Callable[[str | None, int, str], None] | None = None
    allowed_origins: frozenset[str] = frozenset()  # sites whose pages may change state


SETTINGS = GuardSettings()


def app_path(scope: Scope) -> str:
    """The request path within this application: an application deployed at a route prefix
    (``/diabetes``) sees ``/diabetes/v2/...`` in ``path`` and the prefix in ``root_path``,
    as ASGI specifies and Serve sets both."""
    return scope["path"].removeprefix(scope.get("root_path", "")) or "/"


async def _answer(
    send: Any, status: int, message: str, key: str, extra: list | None = None
) -> None:
    body = orjson.dumps({key: message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def settings(self) -> GuardSettings:
        return SETTINGS

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is None and scope["method"] in BODY_METHODS:
            refusal, receive = await self._buffer_body(scope, receive)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        if self.settings.on_reject is not None:
            self.settings.on_reject(status)
        extra = None
        if status == 401:  # Basic only where it would be accepted: GET and HEAD
            offered = CHALLENGES if scope["method"] in SAFE_METHODS else CHALLENGES[:1]
            extra = [(b"www-authenticate", c.encode()) for c in offered]
        # the Open Inference Protocol names its error field "error"; the rest of the API "detail"
        key = "error" if app_path(scope).startswith("/v2/") else "detail"
        await _answer(send, status, message, key, extra)

    def _check(self, scope: Scope) -> tuple[int, str] | None:
        """Another site (403), the key (401/403), the body's type (415), in that order.

        The path, its scope and the headers are worked out once per request, and the
        headers only when something reads them: a GET with keys off reads none."""
        method, path = scope["method"], app_path(scope)
        needed = required_scope(method, path)
        safe = method in SAFE_METHODS
        if needed is None or (safe and not SETTINGS.keys.enabled):
            return None  # health probes and docs; reads without keys
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if not safe:
            message = cross_site_refusal(
                method, headers, scope.get("scheme", "http"), SETTINGS.allowed_origins
            )
            if message is not None:
                return 403, message
        refusal = self._authorize(scope, headers, method, path, needed)
        if refusal is None and not safe:
            message = content_type_refusal(method, headers, path)
            refusal = None if message is None else (415, message)
        return refusal

    def _authorize(
        self,
        scope: Scope,
        headers: dict[str, str],
        method: str,
        path: str,
        needed: KeyScope,
    ) -> tuple[int, str] | None:
        keys = SETTINGS.keys
        if not keys.enabled:
            return None
        route = f"{method} {path}"
        decision = keys.authorize(presented_key(headers, method), needed, route=route)
        if decision.key is not None or decision.status != 200:
            # the audit trail: which key acted (the routes read it from the request's
            # state), and every refusal
            scope.setdefault("state", {})["raysplit_key"] = decision.key
            if SETTINGS.on_key is not None:
                SETTINGS.on_key(decision.key, decision.status, route)
        if decision.status == 200:
            return None
        if decision.status == 401 and basic_on_unsafe_method(headers, method):
            return 401, BASIC_REFUSED_MESSAGE
        return decision.status, decision.message

    async def _buffer_body(self, scope: Scope, receive: Any) -> tuple[tuple[int, str] | None, Any]:
        """The whole body, within the size and time limits, replayed to the endpoint."""
        limit = self.settings.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return (400, "Content-Length is not a number"), receive
                if declared > limit:
                    return (413, _too_large(declared, limit)), receive
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return (400, "client disconnected before sending its body"), receive
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return (413, _too_large(size, limit)), receive
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return (
                408,
                f"the request body did not arrive within {self.settings.body_timeout_s:g} s",
            ), receive
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:  # after the body only a disconnect can come
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return None, replay


def _too_large(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes (or more) exceeds the limit of {limit} bytes;"
        " send fewer rows per request (max_body_bytes in the deployment's user_config)"
    )
