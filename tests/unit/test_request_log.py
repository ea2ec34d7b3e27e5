"""The request log's sampling: one success in N, every refusal and error."""

from __future__ import annotations

import asyncio
import logging

import pytest

from serve_app.http import request_log
from serve_app.http.request_log import LogSampling, RequestLog


def test_one_success_in_every_n_and_every_error_is_kept() -> None:
    sampling = LogSampling(every=3)
    statuses = [200, 200, 200, 404, 200, 500, 200, 200, 201]
    kept = [status for status in statuses if sampling.keep(status)]
    assert kept == [200, 404, 500, 200]  # the 3rd and 6th of 7 successes; both errors
    assert all(LogSampling(every=1).keep(200) for _ in range(5))


def _app(status: int):
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _call(app: RequestLog, path: str = "/predict") -> None:
    scope = {"type": "http", "method": "POST", "path": path}

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(_message: dict) -> None:
        return None

    asyncio.run(app(scope, receive, send))


def test_the_middleware_logs_sampled_successes_with_their_rate(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_log, "SAMPLING", LogSampling(every=4))
    ok, refused = RequestLog(_app(200)), RequestLog(_app(422))
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        for _ in range(8):
            _call(ok)
        _call(refused)
    lines = [r for r in caplog.records if r.getMessage().startswith("POST /predict")]
    assert [r.status for r in lines] == [200, 200, 422]
    assert [r.sampled_every for r in lines] == [4, 4, 1]
