"""What every route may use of the replica that serves it, and how it gets it.

Routes are module-level functions that receive the replica through a FastAPI dependency,
which the deployment (:mod:`serve_app.app`) points at the replica serving the request.
They are not methods of the deployment class: Serve rewrites a method route's signature
in the driver and ships the class by value, and a method inherited from an importable
module reaches the replica without that rewrite.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request

from raysplit.eventstore.store import EventStore
from serve_app.config.errors import NotReady
from serve_app.events.buffer import EventBuffer
from serve_app.metrics.experiment import ExperimentMetrics
from serve_app.predict.deploy_status import DeployStatus
from serve_app.predict.predictor import Prediction, Predictor
from serve_app.predict.state import ServingState
from serve_app.replica.reading import experiment_report
from serve_app.report.experiment import ExperimentReport


class Replica:
    """The parts the ingress deployment (:class:`serve_app.app.Ingress`) sets up."""

    state: ServingState | None
    predictor: Predictor
    events: EventBuffer
    metrics: ExperimentMetrics
    event_store_url: str
    replica_id: str
    deploy: DeployStatus

    def swap(self, seen: ServingState, new: ServingState) -> bool:
        """Swap in what a background loop built (the alias watcher, the rollout follower),
        unless a reconfigure came in between; a new split is recorded as a new epoch."""
        if self.state is not seen:
            return False
        if new.allocation.key != seen.allocation.key:
            self.events.add_allocation(new.allocation)
        self.state = new
        self.metrics.runtimes(new)
        return True

    def serving(self) -> ServingState:
        if self.state is None:
            raise NotReady("no experiment is configured yet")
        return self.state

    async def store(self) -> EventStore:
        """The event store, connected on first use; a 503 while it cannot be reached."""
        if self.events.store is None:
            try:
                self.events.store = await asyncio.to_thread(EventStore, self.event_store_url)
            except Exception as exc:
                raise NotReady(f"event store unavailable: {type(exc).__name__}") from exc
        return self.events.store

    async def report(self, experiment: str | None = None) -> ExperimentReport:
        """The report of ``experiment`` (default: the one served now), from the store."""
        state = self.serving()
        store = await self.store()
        name = experiment or state.config.experiment
        return await asyncio.to_thread(experiment_report, store, state, name)

    def answer_headers(self, prediction: Prediction) -> dict[str, str]:
        """What answered, for clients and for the request log line."""
        headers = {
            "X-Variant": prediction.assignment.variant,
            "X-Model-Version": str(prediction.model.resolved.version),
            "X-Model-Runtime": prediction.model.runtime,
            "X-Raysplit-Replica": self.replica_id,
        }
        if prediction.event is not None:
            headers["X-Raysplit-Event"] = prediction.event
        return headers

    def serve_status(self) -> dict[str, str]:
        """Serve's own view of the last deploy (the deployment knows how to ask)."""
        raise NotImplementedError


def acting_key(request: Request) -> str:
    """Which API key made this request, for the audit trail: its name (or fingerprint),
    set by :mod:`serve_app.http.guard`; "no key" when keys are off."""
    return getattr(request.state, "raysplit_key", None) or "no key"


_replica: Replica | None = None


def bind_replica(replica: Replica) -> None:
    """How routes find the replica serving a request: each replica binds itself as it
    starts (one replica per worker process, so a module global holds exactly one).

    Not FastAPI's ``dependency_overrides``: with any override set, FastAPI rebuilds the
    dependency tree of every request, ``inspect.signature`` included (py-spy on a soak
    replica caught it in ``solve_dependencies`` -> ``get_dependant``)."""
    global _replica
    _replica = replica


async def current_replica() -> Replica:
    """The replica serving this request.

    Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, one
    thread hop per request (a profile of the single-row path showed anyio's thread pool in
    every request's samples)."""
    if _replica is None:
        raise RuntimeError("no replica is bound: call serve_app.replica.base.bind_replica")
    return _replica


ReplicaDep = Annotated[Replica, Depends(current_replica)]
