"""One log line per request, naming the variant and model version that answered.

Serve's own access log cannot know the variant, so ``serve_config.yaml`` turns it off
(``enable_access_log: false``) and this middleware writes the line instead. With Serve's
``logging_config.encoding: JSON`` the line is a JSON object whose ``request_id`` Serve fills
in (the client's ``X-Request-Id`` or a generated one) and whose ``variant``,
``model_version``, ``status``, ``method``, ``path`` and ``duration_ms`` fields come from
here; with ``TEXT`` the message itself reads ``POST /predict 200 1.3ms champion v1``.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which wraps
every response in extra tasks and streams.

Every refusal and error (status 400 and up) is logged. Of the requests that succeed, one
in ``request_log_every`` is (the config sets :data:`SAMPLING`), with ``sampled_every`` in
its fields so a count from the logs can be scaled: building and formatting the record
and handing it to Ray's log handlers was 6-7% of a replica's busy time at one line a
request (docs/profile.md), and the metrics already count every request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("ray.serve")

Scope = dict[str, Any]


@dataclass
class LogSampling:
    """One successful request's line in ``every``, counted across this replica's requests."""

    every: int = 1
    seen: int = 0

    def keep(self, status: int) -> bool:
        if status >= 400 or self.every <= 1:
            return True
        self.seen += 1
        return self.seen % self.every == 0


SAMPLING = LogSampling()


class RequestLog:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "variant": None, "version": None}

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-variant":
                        seen["variant"] = value.decode()
                    elif name == b"x-model-version":
                        seen["version"] = value.decode()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if SAMPLING.keep(seen["status"]):
                _log(scope, seen, (time.perf_counter() - started) * 1000)


def _log(scope: Scope, seen: dict[str, Any], duration: float) -> None:
    answered = f" {seen['variant']} v{seen['version']}" if seen["variant"] else ""
    logger.info(
        "%s %s %d %.2fms%s",
        scope["method"],
        scope["path"],
        seen["status"],
        duration,
        answered,
        extra={
            "method": scope["method"],
            "path": scope["path"],
            "status": seen["status"],
            "duration_ms": round(duration, 3),
            "variant": seen["variant"],
            "model_version": seen["version"],
            "sampled_every": 1 if seen["status"] >= 400 else SAMPLING.every,
            # the API key that made the request (name or fingerprint), if any
            "key": scope.get("state", {}).get("raysplit_key"),
        },
    )
