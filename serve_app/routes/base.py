"""What every route group may use of the replica that serves it."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.errors import NotReady
from serve_app.event_buffer import EventBuffer
from serve_app.event_store import EventStore
from serve_app.predictor import Prediction, Predictor
from serve_app.state import ServingState


class Replica:
    """The parts the ingress deployment (:class:`serve_app.app.Ingress`) sets up."""

    _state: ServingState | None
    _predictor: Predictor
    _events: EventBuffer
    _event_store_url: str
    _replica: str
    _last_reconfigure: dict[str, Any]

    def serving(self) -> ServingState:
        if self._state is None:
            raise NotReady("no experiment is configured yet")
        return self._state

    async def store(self) -> EventStore:
        """The event store, connected on first use; a 503 while it cannot be reached."""
        if self._events.store is None:
            try:
                self._events.store = await asyncio.to_thread(EventStore, self._event_store_url)
            except Exception as exc:
                raise NotReady(f"event store unavailable: {type(exc).__name__}") from exc
        return self._events.store

    def answer_headers(self, prediction: Prediction) -> dict[str, str]:
        """What answered, for clients and for the request log line."""
        headers = {
            "X-Variant": prediction.assignment.variant,
            "X-Model-Version": str(prediction.model.resolved.version),
            "X-Raysplit-Replica": self._replica,
        }
        if prediction.event is not None:
            headers["X-Raysplit-Event"] = prediction.event
        return headers

    def deploy_status(self) -> dict[str, str]:
        """Serve's own view of the last deploy (the deployment knows how to ask)."""
        raise NotImplementedError
