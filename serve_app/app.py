"""The Ray Serve application: one ingress deployment that holds every variant in process.

DESIGN.md measured in-process variants at 2088-3251 req/s against 316-598 req/s for a
router calling model deployments through handles on 2 cores, so each ingress replica
loads all variants and routes locally; autoscaling scales the ingress.

Deploy with ``serve deploy serve_config.yaml``; the traffic split lives in the ingress
``user_config`` and is applied by :meth:`Ingress.reconfigure` without restarting replicas.
"""

import asyncio
import logging
import os
import random
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from ray import serve

from raysplit import __version__
from raysplit.errors import describe_validation_error
from raysplit.settings import Locations
from serve_app import guard
from serve_app.auth import ApiKeys, exposure_warning
from serve_app.batching import JobResult, PredictionJob, run_jobs
from serve_app.config import IngressConfig
from serve_app.event_buffer import EventBuffer
from serve_app.event_store import EventStore
from serve_app.metrics import ExperimentMetrics
from serve_app.models import LoadedModel, ModelLoadError, Output, load, resolve
from serve_app.oip import infer_response, parse_infer
from serve_app.report import DRIFT_WINDOW, ExperimentReport, build_report
from serve_app.request_log import RequestLog
from serve_app.responses import JSONResponse
from serve_app.routing import Assignment, RoutingError
from serve_app.schemas import (
    InvalidRequest,
    PredictRequestDoc,
    PredictResponse,
    parse_feedback,
    parse_instances,
    parse_json,
)
from serve_app.state import IncompatibleVariants, ServingState
from serve_app.summary import MetricsSummary, summarize

logger = logging.getLogger("ray.serve")
MAX_HISTORY = 2000

api = FastAPI(
    title="raysplit",
    version=__version__,
    description="Predictions from MLflow-registered scikit-learn models, split between"
    " variants for A/B experiments.",
)

# Keys and limits live in serve_app.guard.SETTINGS, reached through the module: Serve ships
# this class by value, so a name imported from there would be a copy the middleware never sees.
api.add_middleware(guard.Guard)
api.add_middleware(RequestLog)  # added last, so outermost: refusals are logged too


class PredictionFailed(RuntimeError):
    """The assigned variant's model raised: a 500 that names the variant and version."""


def _error(status: int, message: str, key: str = "detail") -> JSONResponse:
    # Serve itself echoes X-Request-Id (the client's, or one it generated) on every response
    return JSONResponse({key: message}, status_code=status)


# Replica counts and autoscaling live in serve_config.yaml only: a code default here
# would silently win over `num_replicas` given there.
@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    def __init__(self) -> None:
        # Keys come from this replica's environment (RAYSPLIT_API_KEYS, _FILE); a malformed
        # entry stops the replica from starting, with the reason in `serve status`.
        guard.SETTINGS.keys = ApiKeys.from_environment(os.environ)
        self._state: ServingState | None = None
        self._last_reconfigure: dict[str, Any] = {"status": "pending"}
        self._event_store_url = os.environ.get(
            "RAYSPLIT_EVENT_STORE_URL", Locations.resolve().event_store_url
        )
        self._events = EventBuffer(lambda: EventStore(self._event_store_url))
        self._metrics = ExperimentMetrics()
        self._background: set[asyncio.Task] = set()
        context = serve.get_replica_context()
        self._replica = context.replica_id.unique_id
        self._app = context.app_name
        self._rng = random.Random()
        self._refresher: asyncio.Task | None = None
        self._reporter: asyncio.Task | None = None

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
            state = ServingState.build(config, models)
        except ValidationError as exc:
            self._fail(describe_validation_error(exc, "user_config"))
        except (ModelLoadError, IncompatibleVariants) as exc:
            self._fail(str(exc))
        self._batched.set_max_batch_size(config.batch_requests)
        self._apply_limits(config)
        first = self._state is None
        self._state = state
        self._last_reconfigure = {"status": "ok", "at": time.time()}
        self._start_alias_refresh()
        self._events.start()
        self._metrics.start()
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_metrics())
        await self._events.flush()  # events of the old config go out before the new ones
        if first:
            await asyncio.to_thread(self._warn_if_exposed)
        logger.info(
            "experiment %s: %s",
            config.experiment,
            ", ".join(f"{n}={m.resolved.uri}" for n, m in models.items()),
        )

    def _apply_limits(self, config: IngressConfig) -> None:
        guard.SETTINGS.max_body_bytes = config.max_body_bytes
        guard.SETTINGS.body_timeout_s = config.body_timeout_s
        guard.SETTINGS.on_reject = lambda status: self._metrics.rejected(config.experiment, status)
        self._events.set_interval(config.event_flush_interval_s)

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

    def _start_alias_refresh(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_aliases())

    async def _refresh_aliases(self) -> None:
        """Follow alias moves (`raysplit promote`) without a deploy.

        ``serve deploy`` with an unchanged config does not call ``reconfigure()``, so a
        moved alias would otherwise never be noticed. A new version is loaded completely
        before the swap; a failure is logged and the current models keep serving.
        """
        while True:
            interval = self._state.config.alias_refresh_s if self._state else 0
            if interval <= 0:
                return
            await asyncio.sleep(interval)
            state = self._state
            try:
                models = await asyncio.to_thread(self._load_models, state.config)
                if {n: m.resolved.uri for n, m in models.items()} != {
                    n: m.resolved.uri for n, m in state.models.items()
                }:
                    new_state = ServingState.build(state.config, models)
                    if self._state is state:  # a reconfigure in between wins
                        self._state = new_state
                        logger.info(
                            "alias moved: now serving %s",
                            {n: m.resolved.uri for n, m in models.items()},
                        )
            except Exception as exc:  # keep serving what is loaded; say why
                logger.warning("alias refresh failed, still serving the current models: %s", exc)

    async def _report_metrics(self) -> None:
        """Event-buffer figures every few seconds; the experiment report's gauges (quality,
        SRM, sequential p-values, drift) every ``report_interval_s``, from the one replica
        that holds the experiment's report lease."""
        last_report = 0.0
        while True:
            await asyncio.sleep(5)
            self._metrics.events(self._events.stats())
            interval = self._state.config.report_interval_s if self._state else 0
            if interval <= 0 or time.monotonic() - last_report < interval:
                continue
            last_report = time.monotonic()
            try:
                store = await self._store()
                experiment = self._state.config.experiment
                if await asyncio.to_thread(
                    store.claim_report, experiment, self._replica, 3 * interval
                ):
                    self._metrics.report(await self._build_report(None))
            except Exception as exc:  # the store may be down: the gauges just wait
                logger.warning("experiment gauges not updated: %s", exc)

    def _fail(self, message: str) -> None:
        self._last_reconfigure = {"status": "failed", "error": message, "at": time.time()}
        logger.error("reconfigure rejected, still serving the previous config: %s", message)
        raise ValueError(message) from None

    def _load_models(self, config: IngressConfig) -> dict[str, LoadedModel]:
        """Load each variant, reusing a loaded model whose pinned version is unchanged."""
        client = MlflowClient()
        current = {m.resolved.uri: m for m in (self._state.models.values() if self._state else [])}
        models = {}
        for variant in config.variants:
            pinned = resolve(variant.model_uri, client)  # one registry call per variant
            loaded = current.get(pinned.uri)
            if loaded is None or (loaded.pickled and not config.allow_pickle):
                loaded = load(variant, pinned, config.allow_pickle)
            models[variant.name] = loaded
        return models

    def _serving(self) -> ServingState:
        if self._state is None:
            raise InvalidRequest("no experiment is configured yet", 503)
        return self._state

    # ----------------------------------------------------------------- prediction
    def _assign(self, state: ServingState, request: Request, forced: str | None) -> Assignment:
        sticky = request.headers.get(state.config.sticky_key)
        return state.router.assign(sticky, forced, self._rng.random())

    def _record(
        self,
        state: ServingState,
        request_id: str,
        variant: str,
        model: LoadedModel,
        rows: np.ndarray,
        output: Output | None,
        latency_ms: float,
        shadow: bool,
        error: str | None = None,
    ) -> None:
        """Queue the prediction event; the database write happens off the request path."""
        if not shadow:
            self._metrics.prediction(
                state.config.experiment,
                variant,
                model.resolved.version,
                latency_ms,
                None if output is None else output[0],
                model.classes,
            )
        if not state.config.record_events:
            return
        self._events.add_prediction(
            {
                "request_id": request_id,
                "variant": variant,
                "created_at": time.time(),
                "experiment": state.config.experiment,
                "model_name": model.resolved.name,
                "model_version": model.resolved.version,
                "shadow": shadow,
                "inputs": rows.tolist(),
                "predictions": [] if output is None else output[0],
                "probabilities": None if output is None else output[1],
                "latency_ms": latency_ms,
                "outcome": "ok" if output is not None else "error",
                "error": error,
            }
        )

    def _shadow(
        self, state: ServingState, request_id: str, rows: np.ndarray, answered: list[Any]
    ) -> None:
        """Give each shadow variant a copy of the request after the response is sent."""

        async def run() -> None:
            await asyncio.sleep(0)  # let the live response go first
            for variant in state.config.shadows:
                model = state.models[variant.name]
                result = await self._model_call(PredictionJob(model, rows))
                if result.output is None:  # a shadow must never hurt the live path
                    logger.error("shadow variant %s failed: %s", variant.name, result.error)
                    continue
                self._record(
                    state,
                    request_id,
                    variant.name,
                    model,
                    rows,
                    result.output,
                    result.latency_ms,
                    True,
                )
                self._metrics.shadow(
                    state.config.experiment, variant.name, result.output[0] == answered
                )

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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

    async def _predict(
        self, state: ServingState, assignment: Assignment, request_id: str, rows: np.ndarray
    ) -> tuple[LoadedModel, list, list | None, str | None]:
        """Model, predictions, probabilities, and (with ``durable_events``) whether the
        event is ``stored`` or only ``queued`` when the answer goes out."""
        model = state.models[assignment.variant]
        result = await self._model_call(PredictionJob(model, rows))
        error = (
            None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500]
        )
        self._record(
            state,
            request_id,
            assignment.variant,
            model,
            rows,
            result.output,
            result.latency_ms,
            False,
            error,
        )
        if error is not None:  # counted against the variant, answered with a 500
            logger.error(
                "variant %s failed on request %s: %s", assignment.variant, request_id, error
            )
            raise PredictionFailed(
                f"variant '{assignment.variant}' ({model.resolved.uri}) failed to predict: {error}"
            )
        predictions, probabilities = result.output
        if state.config.shadows:
            self._shadow(state, request_id, rows, predictions)
        event = None
        if state.config.durable_events and state.config.record_events:
            stored = await self._events.stored(state.config.durable_timeout_s)
            event = "stored" if stored else "queued"
        return model, predictions, probabilities, event

    @api.post(
        "/predict",
        response_model=PredictResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"type": "object", "additionalProperties": {"type": "number"}},
                                PredictRequestDoc.model_json_schema(),
                            ]
                        }
                    }
                },
            }
        },
        summary="Predict with the variant the traffic split assigns",
    )
    async def predict(self, request: Request):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            state = self._serving()
            rows = parse_instances(
                parse_json(await request.body()), state.features, state.config.max_batch_rows
            )
            assignment = self._assign(state, request, request.headers.get("x-variant"))
            model, predictions, probabilities, event = await self._predict(
                state, assignment, request_id, rows
            )
        except InvalidRequest as exc:
            return self._rejected(exc.status, str(exc))
        except RoutingError as exc:
            return self._rejected(403 if "disabled" in str(exc) else 400, str(exc))
        except PredictionFailed as exc:
            return _error(500, str(exc))
        body = {
            "request_id": request_id,
            "variant": assignment.variant,
            "model": {"name": model.resolved.name, "version": model.resolved.version},
            "predictions": predictions,
        }
        if probabilities is not None:
            body["classes"] = model.classes
            body["probabilities"] = probabilities
        return JSONResponse(body, headers=self._answer_headers(assignment.variant, model, event))

    def _answer_headers(
        self, variant: str, model: LoadedModel, event: str | None
    ) -> dict[str, str]:
        """What answered, for clients and for the request log line."""
        headers = {
            "X-Variant": variant,
            "X-Model-Version": str(model.resolved.version),
            "X-Raysplit-Replica": self._replica,
        }
        if event is not None:
            headers["X-Raysplit-Event"] = event
        return headers

    def _rejected(self, status: int, message: str, key: str = "detail") -> JSONResponse:
        """Refused before any model ran: never assigned, so no event, only a count."""
        state = self._state
        self._metrics.rejected(state.config.experiment if state else "", status)
        return _error(status, message, key)

    # ----------------------------------------------------------------- inspection
    @api.get("/models", summary="Variants, weights, resolved versions and load state")
    async def models(self):
        state = self._state
        variants = []
        if state is not None:
            shares = state.router.expected_shares()
            for v in state.config.variants:
                model = state.models[v.name]
                variants.append(
                    {
                        **v.model_dump(),
                        "share": shares.get(v.name, 0.0),
                        "model": {"name": model.resolved.name, "version": model.resolved.version},
                        "resolved_uri": model.resolved.uri,
                        "loaded": True,
                    }
                )
        return {
            "experiment": state.config.experiment if state else None,
            "deploy": await asyncio.to_thread(self._deploy_status),
            "control": state.config.control_variant if state else None,
            "sticky_key": state.config.sticky_key if state else None,
            "features": state.features if state else [],
            "variants": variants,
            "last_reconfigure": self._last_reconfigure,
            "events": self._events.stats(),
            "replica": self._replica,
        }

    def _deploy_status(self) -> dict[str, str]:
        """Serve's own view of the last deploy. A replica whose reconfigure() failed is
        replaced, so only the controller can tell the surviving replicas' callers why."""
        app = serve.status().applications.get(self._app)
        if app is None:
            return {"status": "UNKNOWN", "message": ""}
        details = [d.message for d in app.deployments.values() if d.message]
        return {"status": str(app.status.value), "message": " ".join([app.message, *details])}

    async def _store(self) -> EventStore:
        if self._events.store is None:
            try:
                self._events.store = await asyncio.to_thread(EventStore, self._event_store_url)
            except Exception as exc:
                raise InvalidRequest(f"event store unavailable: {type(exc).__name__}", 503) from exc
        return self._events.store

    @api.get("/predictions/history", summary="Recent predictions from the event store")
    async def history(
        self, variant: str | None = None, limit: int = 100, shadow: bool | None = None
    ):
        try:
            store = await self._store()
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        rows = await asyncio.to_thread(
            store.recent_predictions, max(1, min(limit, MAX_HISTORY)), variant, shadow
        )
        return {"predictions": rows, "events": self._events.stats()}

    async def _build_report(self, experiment: str | None) -> ExperimentReport:
        state = self._serving()
        store = await self._store()
        name = experiment or state.config.experiment
        current = name == state.config.experiment
        references = (
            {n: (m.reference, state.features) for n, m in state.models.items() if m.reference}
            if current
            else {}
        )

        def gather() -> ExperimentReport:
            rows = store.experiment_rows(name)
            recent = {v: store.recent_inputs(name, v, DRIFT_WINDOW) for v in references}
            return build_report(
                name,
                rows,
                state.models[state.config.control_variant].classes is not None,
                state.router.expected_shares() if current else None,
                state.config.control_variant if current else None,
                references,
                state.config.min_detectable_effect,
                recent,
            )

        return await asyncio.to_thread(gather)

    @api.get("/experiment", summary="The live A/B report", response_model=ExperimentReport)
    async def experiment(self, experiment: str | None = None):
        try:
            report = await self._build_report(experiment)
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        report.events = self._events.stats()
        return report

    @api.get(
        "/metrics/summary",
        summary="Requests, errors and latency per variant over a recent window",
        response_model=MetricsSummary,
    )
    async def metrics_summary(self, window_s: float = 300.0):
        try:
            state = self._serving()
            store = await self._store()
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        window_s = min(max(window_s, 1.0), 7 * 86400.0)
        rows = await asyncio.to_thread(
            store.recent_outcomes, state.config.experiment, time.time() - window_s
        )
        return summarize(state.config.experiment, window_s, rows, self._events.stats())

    @api.post("/feedback", summary="Ground truth for earlier predictions (idempotent)")
    async def feedback(self, request: Request):
        try:
            items = parse_feedback(parse_json(await request.body()))
            store = await self._store()
        except InvalidRequest as exc:
            return _error(exc.status, str(exc))
        now = time.time()
        accepted = sum(
            self._events.add_feedback(
                {"request_id": i.request_id, "created_at": now, "label": i.label, "value": i.value}
            )
            for i in items
        )
        ids = {i.request_id for i in items}
        found = await asyncio.to_thread(store.live_predictions, ids)
        found.update(self._events.pending_predictions(ids - found.keys()))
        for item in items:
            if item.request_id in found:
                self._count_feedback(found[item.request_id], item.label, item.value)
        return {"accepted": accepted, "unknown_request_ids": sorted(ids - found.keys())}

    def _count_feedback(self, prediction: dict[str, Any], label: Any, value: float | None) -> None:
        """Online quality as counters: correct or not, or the absolute error."""
        predicted = prediction["predictions"]
        single = len(predicted) == 1
        correct = str(predicted[0]) == str(label) if single and label is not None else None
        abs_error = abs(float(predicted[0]) - value) if single and value is not None else None
        self._metrics.feedback(prediction["experiment"], prediction["variant"], correct, abs_error)

    @api.get("/healthz", summary="The replica process is up")
    async def healthz(self):
        return {"status": "ok"}

    @api.get("/readyz", summary="An experiment is loaded and can answer")
    async def readyz(self):
        if self._state is None:
            return _error(503, "no experiment is configured yet")
        return {"status": "ready", "experiment": self._state.config.experiment}

    # ----------------------------------------------------------------- OIP v2
    @api.get("/v2/health/live")
    async def oip_live(self):
        return {"live": True}

    @api.get("/v2/health/ready")
    async def oip_ready(self):
        return JSONResponse(
            {"ready": self._state is not None}, status_code=200 if self._state else 503
        )

    def _oip_target(self, name: str) -> tuple[ServingState, str | None]:
        """``(state, forced variant)``: the experiment's model name routes by the split."""
        state = self._serving()
        if name in state.models:
            return state, name
        if name in state.model_names:
            return state, None
        raise InvalidRequest(
            f"unknown model '{name}'; serving {sorted(state.model_names | set(state.models))}",
            404,
        )

    @api.get("/v2/models/{name}")
    async def oip_metadata(self, name: str):
        try:
            state, forced = self._oip_target(name)
        except InvalidRequest as exc:
            return _error(exc.status, str(exc), key="error")
        variants = [forced] if forced else [v.name for v in state.config.live]
        model = state.models[variants[0]]
        outputs = [
            {"name": "predict", "datatype": "BYTES" if model.classes else "FP64", "shape": [-1]}
        ]
        if model.classes is not None:
            outputs.append(
                {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)]}
            )
        return {
            "name": name,
            "versions": sorted({str(state.models[v].resolved.version) for v in variants}),
            "platform": "sklearn",
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in state.features],
            "outputs": outputs,
        }

    @api.get("/v2/models/{name}/ready")
    async def oip_model_ready(self, name: str):
        try:
            self._oip_target(name)
        except InvalidRequest as exc:
            return _error(exc.status, str(exc), key="error")
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def oip_infer(self, name: str, request: Request):
        try:
            if "inference-header-content-length" in request.headers:
                raise InvalidRequest(
                    "the binary tensor extension is not supported; send JSON tensors"
                    " (tritonclient: binary_data=False)",
                    400,
                )
            state, forced = self._oip_target(name)
            infer, rows = parse_infer(
                parse_json(await request.body()), state.features, state.config.max_batch_rows
            )
            request_id = infer.id or request.headers.get("x-request-id") or uuid.uuid4().hex
            assignment = self._assign(state, request, forced or request.headers.get("x-variant"))
            model, predictions, probabilities, event = await self._predict(
                state, assignment, request_id, rows
            )
        except InvalidRequest as exc:
            return self._rejected(exc.status, str(exc), key="error")
        except RoutingError as exc:
            return self._rejected(400, str(exc), key="error")
        except PredictionFailed as exc:
            return _error(500, str(exc), key="error")
        return JSONResponse(
            infer_response(
                name,
                model.resolved.version,
                request_id,
                assignment.variant,
                predictions,
                probabilities,
            ),
            headers=self._answer_headers(assignment.variant, model, event),
        )

    async def __del__(self) -> None:
        """Graceful shutdown: write what is queued before the replica goes."""
        await self._events.close()


app = Ingress.bind()
