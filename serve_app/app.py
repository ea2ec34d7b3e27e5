"""The Ray Serve application: one ingress deployment that holds every variant in process.

A router calling model deployments through handles served a fraction of what the same
models loaded in the ingress replica served (docs/architecture.md, "Measured reasons"), so
each ingress replica loads all variants and routes locally; autoscaling scales the ingress.

This module is the Ray edge: the deployment's life cycle (``reconfigure()``, background
loops, shutdown), Serve's request batching and its status API. The prediction pipeline
(:mod:`serve_app.predict.predictor`), the routes (:mod:`serve_app.http.routes`) and the background
jobs (:mod:`serve_app.replica.loops`) know nothing of Ray.

Deploy with ``serve deploy serve_config.yaml``; the traffic split lives in the ingress
``user_config`` and is applied by :meth:`Ingress.reconfigure` without restarting replicas.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import Any, NoReturn

from mlflow.tracking import MlflowClient
from ray import serve

from raysplit.core.events import Event
from raysplit.core.settings import Locations
from raysplit.eventstore.accepted_configs import AcceptedConfig
from raysplit.eventstore.lake.appender import LakeAppender
from raysplit.eventstore.store import EventStore
from serve_app.config.ingress import IngressConfig
from serve_app.events.buffer import EventBuffer
from serve_app.events.writer_process import ProcessWriter
from serve_app.http import guard, request_log
from serve_app.http.api import api
from serve_app.http.auth import ApiKeys, exposure_warning
from serve_app.http.key_use import KeyAudit, KeysFileWatcher, KeyUse
from serve_app.http.routes import experiment, health, keys, oip, predict, retrain, rollout, ui
from serve_app.metrics.experiment import ExperimentMetrics
from serve_app.predict.batching import JobResult, PredictionJob, run_jobs
from serve_app.predict.deploy_status import DeployPhase, DeployStatus
from serve_app.predict.models import LoadedModel
from serve_app.predict.predictor import Predictor
from serve_app.predict.prepare import ConfigRefused, config_hash, load_variants, prepare
from serve_app.predict.state import ServingState
from serve_app.replica.base import Replica, bind_replica
from serve_app.replica.lake_jobs import LakeFlusher, RetentionJob
from serve_app.replica.loops import AliasWatcher, EventGauges, ReportPublisher
from serve_app.replica.rollout_loops import RolloutController, RolloutFollower
from serve_app.rollout.state import DecisionEntry, RolloutRecord, applies
from serve_app.rollout.store import rollout_store

logger = logging.getLogger("ray.serve")


for routes in (predict, experiment, oip, health, rollout, retrain, keys, ui):
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
        self.key_use = KeyUse()
        guard.SETTINGS.on_key = self.key_use
        # here, not at import: Serve pickles the routes with `api` into the replica, which
        # may never import this module, so a module-level binding is not there
        bind_replica(self)
        self.state = None
        self.deploy = DeployStatus()
        locations = Locations.resolve()
        self.event_store_url = locations.event_store_url  # RAYSPLIT_EVENT_STORE_URL
        self.metrics = ExperimentMetrics()
        self.lake = LakeFlusher(lambda: self.state, LakeAppender(locations.lake_uri))
        # events are written from a child process, off this replica's GIL;
        # RAYSPLIT_EVENT_WRITER=thread keeps them in a thread here (where no process may start)
        in_thread = os.environ.get("RAYSPLIT_EVENT_WRITER") == "thread"
        self.event_writer = None if in_thread else ProcessWriter(self.event_store_url)
        if self.event_writer is not None:
            try:
                self.event_writer.start()
            except OSError as exc:  # the first write starts another and says why if it fails
                logger.warning("event writer process: %s", exc)
        self.events = EventBuffer(
            lambda: EventStore(self.event_store_url),
            on_feedback=self.metrics.tally.feedback,
            on_written=self._append_to_lake,
            writer=self.event_writer,
        )
        self.predictor = Predictor(self._model_call, self.events, self.metrics.tally)
        self._single_rows_waiting = 0  # single-row requests between yield and model call
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
            KeysFileWatcher(os.environ),
            KeyAudit(self.key_use, self.store),
            RetentionJob(self.store, self.replica_id, locations.retention, locations.lake_uri),
            self.lake,
        )

    # ----------------------------------------------------------------- configuration
    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new experiment, or refuse it and keep serving.

        A config is validated and every model loaded before anything live changes
        (:func:`serve_app.predict.prepare.prepare`). Serve stops a replica whose ``reconfigure()``
        raises, so raising would take the only replica of a small deployment down
        (docs/refused_deploy.md). Instead a replica
        that serves something keeps it and says so, and a replica that *starts* on a
        refused config serves the last config any replica of this application accepted,
        kept in the event store. Only a replica with nothing to serve (the very first
        deploy) raises, and Serve reports the deploy failed.
        """
        new_hash = config_hash(user_config)
        try:
            config, models = await asyncio.to_thread(
                prepare, user_config, MlflowClient(), self._loaded()
            )
        except ConfigRefused as exc:
            await self._refuse(new_hash, str(exc))
            return
        await self._apply(config, models)
        self.deploy = DeployStatus.applied(new_hash)
        self.metrics.config_refused(False)
        await self._record_accepted(user_config, new_hash)

    async def _refuse(self, refused_hash: str, reason: str) -> None:
        """Keep (or, at start, fall back to) a config that was accepted; say so loudly."""
        if self.state is None:
            stored = await self._stored_accepted()
            if stored is None:
                self._fail(reason)
            try:
                config, models = await asyncio.to_thread(
                    prepare, stored.user_config, MlflowClient()
                )
            except ConfigRefused as exc:
                self._fail(
                    f"{reason}; the last accepted config ({stored.config_hash}, from"
                    f" {stored.replica}) cannot be served either: {exc}"
                )
            await self._apply(config, models)
            self.deploy = DeployStatus(from_store=True, serving_config_hash=stored.config_hash)
        self.deploy = self.deploy.refused(reason, refused_hash, self.deploy.serving_config_hash)
        self.metrics.config_refused(True)
        logger.error("deploy refused, %s", self.deploy.line(self._app))
        await self._log_refusal_in_rollout()

    def _fail(self, reason: str) -> NoReturn:
        self.deploy = DeployStatus(
            status=DeployPhase.REFUSED,
            reason=reason,
            since=time.time(),
        )
        logger.error("deploy refused and no accepted config to serve instead: %s", reason)
        raise ValueError(reason) from None

    async def _apply(self, config: IngressConfig, models: dict[str, LoadedModel]) -> None:
        """Swap a prepared config in at once and start what runs beside the requests."""
        # a running rollout keeps its weights across a deploy that does not change it,
        # and a new replica serves them from its first request
        rollout = self.state.rollout if self.state else None
        if config.rollout is not None and rollout is None:
            rollout = await self._stored_rollout(config.experiment)
        state = ServingState.build(config, models, rollout)
        self._batched.set_max_batch_size(config.batch_requests)
        self._apply_limits(config)
        first = self.state is None
        # no flush here: the queue is FIFO with one writer, so the old config's events are
        # written before the new one's anyway, and a write from here would race the writer
        self.events.start()
        self.events.add_allocation(state.allocation)
        self.state = state
        self.metrics.runtimes(state)
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

    def _loaded(self) -> dict[str, LoadedModel]:
        """The models served now, by pinned URI: a deploy reuses those it keeps."""
        return {m.resolved.uri: m for m in (self.state.models.values() if self.state else [])}

    async def _record_accepted(self, user_config: dict[str, Any], accepted_hash: str) -> None:
        """Keep the accepted config where a starting replica finds it; a store that cannot
        be reached costs only that fallback, never the deploy."""
        record = AcceptedConfig(
            application=self._app,
            config_hash=accepted_hash,
            user_config=user_config,
            accepted_at=time.time(),
            replica=self.replica_id,
        )
        try:
            store = await self.store()
            await asyncio.to_thread(store.accepted_configs.save, record)
        except Exception as exc:
            logger.warning(
                "accepted config %s not recorded (%s: %s): a replica that starts on a refused"
                " config cannot fall back to it",
                accepted_hash,
                type(exc).__name__,
                exc,
            )

    async def _stored_accepted(self) -> AcceptedConfig | None:
        try:
            store = await self.store()
            return await asyncio.to_thread(store.accepted_configs.read, self._app)
        except Exception as exc:
            logger.error(
                "the last accepted config is not readable: %s: %s", type(exc).__name__, exc
            )
            return None

    async def _log_refusal_in_rollout(self) -> None:
        """A running rollout keeps deciding on the config it had; its log says why the new
        one did not take over (once, whichever replica writes first)."""
        state = self.state
        if state is None or state.configured.rollout is None:
            return
        # the store's record, not this replica's copy: the follower may not have picked
        # up a rollout that started a moment ago
        rollout = await self._stored_rollout(state.config.experiment)
        if rollout is None or rollout.terminal or not applies(state.configured, rollout):
            return
        status = self.deploy
        marker = f"deploy {status.refused_config_hash} refused"
        entry = DecisionEntry(
            experiment=rollout.experiment,
            rollout_id=rollout.rollout_id,
            at=time.time(),
            seq=rollout.seq,
            step=rollout.step,
            kind="refused_deploy",
            share=rollout.share,
            share_after=rollout.share,
            reason=f"{marker}; still deciding on config {status.serving_config_hash}:"
            f" {status.reason}"[:1024],
            actor=f"deploy via {self.replica_id}",
        )
        try:
            store = await self.store()
            await asyncio.to_thread(rollout_store(store).note_once, entry, marker)
        except Exception as exc:
            logger.warning("refusal not logged in the rollout: %s: %s", type(exc).__name__, exc)

    async def _stored_rollout(self, experiment: str) -> RolloutRecord | None:
        """The experiment's rollout as the store holds it; None if the store cannot say
        (the follower applies it once it can)."""
        try:
            store = await self.store()
            return await asyncio.to_thread(rollout_store(store).read, experiment)
        except Exception as exc:
            logger.warning("rollout state not readable yet, serving the file's weights: %s", exc)
            return None

    def _apply_limits(self, config: IngressConfig) -> None:
        guard.SETTINGS.max_body_bytes = config.max_body_bytes
        guard.SETTINGS.body_timeout_s = config.body_timeout_s
        guard.SETTINGS.allowed_origins = frozenset(config.allowed_origins)
        guard.SETTINGS.on_reject = lambda status: self.metrics.tally.rejected(
            config.experiment, status
        )
        self.events.set_interval(config.event_flush_interval_s)
        request_log.SAMPLING.every = config.request_log_every

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

    def _load_state_models(self, state: ServingState) -> dict[str, LoadedModel]:
        return load_variants(state.config, MlflowClient(), self._loaded())

    async def _refresh_aliases(self) -> None:
        """Load what the aliases point at now (a rollout just moved one)."""
        await self._aliases.tick()

    def serve_status(self) -> dict[str, str]:
        """Serve's own view of the last deploy: RUNNING while a refused config is served
        around (the replicas accepted the call and kept their config), DEPLOY_FAILED only
        when a first deploy had nothing to fall back to."""
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
        """Single rows share a call with whatever single rows are waiting (``@serve.batch``),
        and a single row alone runs at once; a multi-row request is a batch already and runs
        in a worker thread. Either way the request awaits, which is what Serve's
        autoscaler counts as an ongoing request: a handler that never yields finishes
        within one step of the event loop and looks idle however loaded the replica is."""
        if len(job.rows) > 1:
            (result,) = await asyncio.to_thread(run_jobs, [job])
            return result
        if self._single_rows_waiting:  # another request is waiting: share its call
            return await self._batched(job)
        # alone: no batch to join, so no queue, future and batch task to pay for
        self._single_rows_waiting += 1
        try:
            await asyncio.sleep(0)  # a request that arrives meanwhile goes to the batch
            (result,) = run_jobs([job])
            return result
        finally:
            self._single_rows_waiting -= 1

    def _append_to_lake(self, events: list[Event]) -> None:
        if self.lake.enabled():
            self.lake.appender.add(events)

    async def __del__(self) -> None:
        """Graceful shutdown: write what is queued before the replica goes."""
        for loop in self._loops:
            await loop.stop()
        await self.predictor.settle()
        await self.events.close()
        if self.event_writer is not None:
            await asyncio.to_thread(self.event_writer.close)
        await self.lake.flush()


app = Ingress.bind()
