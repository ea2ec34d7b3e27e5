"""The Ray Serve application: one ingress deployment that holds every variant in process.

Measured on 2 cores (docs/architecture.md): a router calling model deployments through
handles served 316-598 req/s, the same models loaded in the ingress replica 2088-3251
req/s, so each ingress replica loads all variants and routes locally; autoscaling scales
the ingress.

This module is the Ray edge: the deployment's life cycle (``reconfigure()``, background
loops, shutdown), Serve's request batching and its status API. The prediction pipeline
(:mod:`serve_app.predictor`), the routes (:mod:`serve_app.routes`) and the background
jobs (:mod:`serve_app.loops`) know nothing of Ray.

Deploy with ``serve deploy serve_config.yaml``; the traffic split lives in the ingress
``user_config`` and is applied by :meth:`Ingress.reconfigure` without restarting replicas.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Any

from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from ray import serve

from raysplit.core.errors import describe_validation_error
from raysplit.core.settings import Locations
from serve_app import guard
from serve_app.api import api
from serve_app.auth import ApiKeys, exposure_warning
from serve_app.batching import JobResult, PredictionJob, run_jobs
from serve_app.config import IngressConfig
from serve_app.event_buffer import EventBuffer
from serve_app.event_store import EventStore
from serve_app.loops import AliasWatcher, EventGauges, ReportPublisher
from serve_app.metrics import ExperimentMetrics
from serve_app.models import LoadedModel, ModelLoadError, load, resolve
from serve_app.predictor import Predictor
from serve_app.rollout_loops import RolloutController, RolloutFollower
from serve_app.rollout_state import RolloutRecord
from serve_app.rollout_store import RolloutStore
from serve_app.routes import experiment, health, oip, predict, retrain, rollout, ui
from serve_app.routes.base import Replica, bind_replica
from serve_app.state import IncompatibleVariants, ServingState

logger = logging.getLogger("ray.serve")


for routes in (predict, experiment, oip, health, rollout, retrain, ui):
    api.include_router(routes.router)


# Replica counts and autoscaling live in serve_config.yaml only: a code default here
# would silently win over `num_replicas` given there.
@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress(Replica):
    def __init__(self) -> None:
        # Keys come from this replica's environment (RAYSPLIT_API_KEYS, _FILE); a malformed
        # entry stops the replica from starting, with the reason in `serve status`.
        guard.SETTINGS.keys = ApiKeys.from_environment(os.environ)
        # here, not at import: Serve pickles the routes with `api` into the replica, which
        # may never import this module, so a module-level binding is not there
        bind_replica(self)
        self.state = None
        self.last_reconfigure = {"status": "pending"}
        self.event_store_url = os.environ.get(
            "RAYSPLIT_EVENT_STORE_URL", Locations.resolve().event_store_url
        )
        self.metrics = ExperimentMetrics()
        self.events = EventBuffer(
            lambda: EventStore(self.event_store_url), on_feedback=self.metrics.tally.feedback
        )
        self.predictor = Predictor(self._model_call, self.events, self.metrics.tally)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self._app = context.app_name
        self._aliases = AliasWatcher(lambda: self.state, self._load_state_models, self.swap)
        self._loops = (
            self._aliases,
            EventGauges(self.events, self.metrics),
            ReportPublisher(
                lambda: self.state, self.store, self.report, self.metrics, self.replica_id
            ),
            RolloutFollower(
                lambda: self.state,
                self.store,
                self.swap,
                self.metrics,
                self.replica_id,
                self._refresh_aliases,
            ),
            RolloutController(lambda: self.state, self.store, self.metrics, self.replica_id),
        )

    # ----------------------------------------------------------------- configuration
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Validate and load the new experiment completely, then swap it in at once.

        On any failure this raises before touching the live state: Ray marks the deploy
        failed (visible in ``serve status``) while this replica keeps serving what it had,
        and ``GET /models`` shows the error.
        """
        try:
            config = IngressConfig.model_validate(user_config)
            models = await asyncio.to_thread(self._load_models, config)
            # a running rollout keeps its weights across a deploy that does not change it,
            # and a new replica serves them from its first request
            rollout = self.state.rollout if self.state else None
            if config.rollout is not None and rollout is None:
                rollout = await self._stored_rollout(config.experiment)
            state = ServingState.build(config, models, rollout)
        except ValidationError as exc:
            self._fail(describe_validation_error(exc, "user_config"))
        except (ModelLoadError, IncompatibleVariants) as exc:
            self._fail(str(exc))
        self._batched.set_max_batch_size(config.batch_requests)
        self._apply_limits(config)
        first = self.state is None
        # no flush here: the queue is FIFO with one writer, so the old config's events are
        # written before the new one's anyway, and a write from here would race the writer
        self.events.start()
        self.events.add_allocation(state.allocation)
        self.state = state
        self.metrics.runtimes(state)
        self.last_reconfigure = {"status": "ok", "at": time.time()}
        self.metrics.start()
        for loop in self._loops:
            loop.start()
        if first:
            await asyncio.to_thread(self._warn_if_exposed)
        # A replica holds ~320,000 objects from Ray, MLflow, scikit-learn and the models
        # that live as long as it does; a full collection scans them all, ~130 ms on 2
        # cores (measured in a process with the replica's imports), a pause every request
        # in flight waits out. Frozen, later collections scan only what requests create.
        # Collected first, so no garbage (the old config's models) is frozen for good:
        # ~130 ms the first time, ~3 ms once the start-up objects are frozen.
        gc.collect()
        gc.freeze()
        logger.info(
            "experiment %s: %s",
            config.experiment,
            ", ".join(f"{n}={m.resolved.uri}" for n, m in models.items()),
        )

    async def _stored_rollout(self, experiment: str) -> RolloutRecord | None:
        """The experiment's rollout as the store holds it; None if the store cannot say
        (the follower applies it once it can)."""
        try:
            store = await self.store()
            return await asyncio.to_thread(RolloutStore(store.engine).read, experiment)
        except Exception as exc:
            logger.warning("rollout state not readable yet, serving the file's weights: %s", exc)
            return None

    def _apply_limits(self, config: IngressConfig) -> None:
        guard.SETTINGS.max_body_bytes = config.max_body_bytes
        guard.SETTINGS.body_timeout_s = config.body_timeout_s
        guard.SETTINGS.on_reject = lambda status: self.metrics.tally.rejected(
            config.experiment, status
        )
        self.events.set_interval(config.event_flush_interval_s)

    def _warn_if_exposed(self) -> None:
        """Say it loudly when anyone on the network can call the API without a key."""
        try:
            host = serve.context._get_global_client().http_config.host
        except Exception as exc:  # the controller is busy: no reason to fail the deploy
            logger.warning("could not read the HTTP bind address to check exposure: %s", exc)
            return
        warning = exposure_warning(host, guard.SETTINGS.keys)
        if warning:
            logger.warning(warning)

    def _fail(self, message: str) -> None:
        self.last_reconfigure = {"status": "failed", "error": message, "at": time.time()}
        logger.error("reconfigure rejected, still serving the previous config: %s", message)
        raise ValueError(message) from None

    def _load_models(self, config: IngressConfig) -> dict[str, LoadedModel]:
        """Load each variant, reusing a loaded model whose pinned version is unchanged."""
        client = MlflowClient()
        current = {m.resolved.uri: m for m in (self.state.models.values() if self.state else [])}
        models = {}
        for variant in config.variants:
            pinned = resolve(variant.model_uri, client)  # one registry call per variant
            loaded = current.get(pinned.uri)
            if loaded is None or (loaded.pickled and not config.allow_pickle):
                loaded = load(variant, pinned, config.allow_pickle)
            models[variant.name] = loaded
        return models

    def _load_state_models(self, state: ServingState) -> dict[str, LoadedModel]:
        return self._load_models(state.config)

    async def _refresh_aliases(self) -> None:
        """Load what the aliases point at now (a rollout just moved one)."""
        await self._aliases.tick()

    def deploy_status(self) -> dict[str, str]:
        """Serve's own view of the last deploy. A replica whose reconfigure() failed is
        replaced, so only the controller can tell the surviving replicas' callers why."""
        app = serve.status().applications.get(self._app)
        if app is None:
            return {"status": "UNKNOWN", "message": ""}
        details = [d.message for d in app.deployments.values() if d.message]
        return {"status": str(app.status.value), "message": " ".join([app.message, *details])}

    # ----------------------------------------------------------------- model calls
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)  # size: user_config
    async def _batched(self, jobs: list[PredictionJob]) -> list[JobResult]:
        """Single-row requests that arrive together share one call per model. No wait is
        added: a batch is whatever queued while the previous call ran, so one client alone
        gets batches of one (measured in docs/benchmarks.md)."""
        return run_jobs(jobs)

    async def _model_call(self, job: PredictionJob) -> JobResult:
        """Single rows wait for a shared call; a multi-row request is a batch already and
        runs in a worker thread. Either way the request awaits, which is what Serve's
        autoscaler counts as an ongoing request: a handler that never yields finishes
        within one step of the event loop and looks idle however loaded the replica is."""
        if len(job.rows) > 1:
            (result,) = await asyncio.to_thread(run_jobs, [job])
            return result
        return await self._batched(job)

    async def __del__(self) -> None:
        """Graceful shutdown: write what is queued before the replica goes."""
        for loop in self._loops:
            await loop.stop()
        await self.predictor.settle()
        await self.events.close()


app = Ingress.bind()
