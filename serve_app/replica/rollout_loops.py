"""A rollout's two background jobs in each ingress replica (issue 16).

* :class:`RolloutFollower` runs in every replica: it starts the deployed rollout if the
  event store does not hold it yet, and serves the stored rollout's weights. Each replica
  polls the one stored record, so all of them serve a decision within ``ROLLOUT_POLL_S``.
* :class:`RolloutController` runs in every replica but acts only in the one holding the
  rollout's lease in the event store: one decision maker at a time, with no extra
  deployment (on 2 cores a replica of its own would cost a CPU share for a job that reads
  a few rows every ``evaluation_interval_s``) and nothing outside the store to keep
  running; a killed holder is replaced when its lease lapses, and resumes from the stored
  record. While the store is unreachable, neither job can read, so no decision is taken and
  every replica keeps the weights it last served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from mlflow.tracking import MlflowClient

from raysplit.eventstore.aggregates import ExperimentAggregates
from raysplit.eventstore.store import EventStore
from serve_app.config.constants import DRIFT_WINDOW, LEASE_TTLS, ROLLOUT_POLL_S
from serve_app.metrics.experiment import ExperimentMetrics
from serve_app.predict.state import ServingState
from serve_app.replica.loops import Loop
from serve_app.replica.reading import experiment_report
from serve_app.rollout.inputs import candidate_psi, rollout_aggregates
from serve_app.rollout.registry import ModelRef, record_outcome
from serve_app.rollout.rule import decide
from serve_app.rollout.state import (
    DecisionEntry,
    RolloutPhase,
    RolloutRecord,
    after_decision,
    applies,
    log_entry_for,
    rollout_id,
    start,
)
from serve_app.rollout.store import rollout_store

logger = logging.getLogger("ray.serve")


def lease_name(experiment: str) -> str:
    return f"rollout:{experiment}"


def log_entry(entry: DecisionEntry) -> None:
    """One JSON line per decision or command in the replica's log (Ray's JSON logging
    keeps it whole), for log pipelines that alert on ``kind``."""
    logger.info("rollout decision %s", orjson.dumps(entry.model_dump(mode="json")).decode())


class RolloutFollower(Loop):
    """Start the deployed rollout once; serve the stored rollout's weights."""

    name = "rollout follower"

    def __init__(
        self,
        current: Callable[[], ServingState | None],
        store: Callable[[], Awaitable[EventStore]],
        swap: Callable[[ServingState, ServingState], bool],
        metrics: ExperimentMetrics,
        holder: str,
        on_promoted: Callable[[], Awaitable[None]],
    ):
        super().__init__()
        self._current = current
        self._store = store
        self._swap = swap
        self._metrics = metrics
        self._holder = holder
        self._on_promoted = on_promoted
        self._identity: str | None = None
        self._identity_at = 0.0
        self._followed_promotion: str | None = None

    def interval(self) -> float:
        state = self._current()
        return ROLLOUT_POLL_S if state is not None and state.configured.rollout is not None else 0.0

    async def tick(self) -> None:
        state = self._current()
        configured = state.configured
        rollouts = rollout_store(await self._store())
        candidate = state.models[configured.rollout.candidate].resolved
        identity = rollout_id(configured.experiment, configured.rollout, candidate.version)
        if identity != self._identity:  # a deploy, or the candidate's alias moved
            self._identity, self._identity_at = identity, time.time()
        record = await asyncio.to_thread(rollouts.read, configured.experiment)
        if record is None or record.rollout_id != identity:
            fresh = start(
                configured.experiment,
                configured.rollout,
                configured.control_variant,
                candidate.version,
                time.time(),
                state.models[configured.control_variant].resolved.version,
            )
            entry = log_entry_for(None, fresh, "start", self._holder, fresh.started_at)
            if await asyncio.to_thread(rollouts.start, fresh, self._identity_at, entry):
                log_entry(entry)
                self._metrics.rollout_decision(entry, fresh.config.candidate)
            record = await asyncio.to_thread(rollouts.read, configured.experiment)
        if record is None or not applies(configured, record):
            return
        self._metrics.rollout(record)
        held = state.rollout
        moved = held is None or (held.rollout_id, held.seq) != (record.rollout_id, record.seq)
        if moved and self._swap(state, state.rebuilt(rollout=record)):
            logger.info(
                "rollout %s: serving %s at %g%% (%s)",
                record.rollout_id,
                record.config.candidate,
                record.share,
                record.phase.value,
            )
        promoted = record.phase is RolloutPhase.PROMOTED and record.registry == "done"
        if promoted and self._followed_promotion != record.rollout_id:
            self._followed_promotion = record.rollout_id
            await self._on_promoted()  # the control's alias moved: load its new version now


class RolloutController(Loop):
    """Evaluate the rollout every ``evaluation_interval_s`` and write the one decision,
    from the replica that holds the lease."""

    name = "rollout controller"

    def __init__(
        self,
        current: Callable[[], ServingState | None],
        store: Callable[[], Awaitable[EventStore]],
        metrics: ExperimentMetrics,
        holder: str,
    ):
        super().__init__()
        self._current = current
        self._store = store
        self._metrics = metrics
        self._holder = holder

    def interval(self) -> float:
        state = self._current()
        if state is None or state.configured.rollout is None:
            return 0.0
        return state.configured.rollout.evaluation_interval_s

    async def tick(self) -> None:
        state = self._current()
        store = await self._store()
        ttl = LEASE_TTLS * self.interval()
        lease = lease_name(state.configured.experiment)
        if not await asyncio.to_thread(store.claim_lease, lease, self._holder, ttl):
            return
        rollouts = rollout_store(store)
        record = await asyncio.to_thread(rollouts.read, state.configured.experiment)
        if record is None or not applies(state.configured, record):
            return  # the followers start it
        if record.registry == "pending":
            await self.sync_registry(store, state, record)
            return
        if record.phase is not RolloutPhase.RUNNING:
            return
        now = time.time()
        aggregates, psi = await asyncio.to_thread(self._inputs, store, state, record)
        decision = decide(
            record.config, record.step, record.step_started_at, now, aggregates, psi, record.control
        )
        after = after_decision(record, decision, now)
        entry = log_entry_for(
            record,
            after,
            decision.kind.value,
            self._holder,
            now,
            decision.reason,
            decision.figures.model_dump(mode="json"),
        )
        if not await asyncio.to_thread(rollouts.commit, record, after, entry):
            return  # the record moved on (an operator, or another holder): next time
        log_entry(entry)
        self._metrics.rollout_decision(entry, record.config.candidate)
        if after.registry == "pending":
            await self.sync_registry(store, state, after)

    @staticmethod
    def _inputs(
        store: EventStore, state: ServingState, record: RolloutRecord
    ) -> tuple[ExperimentAggregates, float | None]:
        classification = state.models[record.control].classes is not None
        queries = store.queries(record.experiment, classification)
        aggregates = rollout_aggregates(queries.aggregates(record.control), record.started_at)
        candidate = state.models[record.config.candidate]
        recent = store.recent_inputs(record.experiment, record.config.candidate, DRIFT_WINDOW)
        return aggregates, candidate_psi(candidate.reference, state.features, recent)

    async def sync_registry(
        self, store: EventStore, state: ServingState, record: RolloutRecord
    ) -> None:
        """Write the outcome to the registry (alias, tags, the rollout's MLflow run), then
        mark it done; on failure the record stays pending and the next tick retries."""
        rollouts = rollout_store(store)
        decisions = await asyncio.to_thread(rollouts.decisions, record.rollout_id)
        report = await asyncio.to_thread(experiment_report, store, state, record.experiment)
        configured = {v.name: v for v in state.configured.variants}
        candidate = state.models[record.config.candidate].resolved
        control = state.models[record.control].resolved
        refs = (
            ModelRef(
                model_uri=configured[record.control].model_uri,
                name=control.name,
                version=record.control_version or control.version or "",
            ),
            ModelRef(
                model_uri=configured[record.config.candidate].model_uri,
                name=candidate.name,
                version=record.candidate_version or candidate.version or "",
            ),
        )
        try:
            run_id = await asyncio.to_thread(
                record_outcome,
                MlflowClient(),
                record,
                decisions,
                *refs,
                report.model_dump(mode="json"),
            )
        except Exception as exc:
            logger.warning("rollout %s: registry not updated yet: %s", record.rollout_id, exc)
            failed = record.model_copy(update={"registry_error": f"{type(exc).__name__}: {exc}"})
            if failed.registry_error != record.registry_error:  # shown in GET /rollout
                failed = failed.model_copy(update={"seq": record.seq + 1})
                await asyncio.to_thread(rollouts.commit, record, failed, None)
            return
        done = record.model_copy(
            update={"registry": "done", "registry_error": None, "seq": record.seq + 1}
        )
        if await asyncio.to_thread(rollouts.commit, record, done, None):
            logger.info("rollout %s: registry updated (MLflow run %s)", record.rollout_id, run_id)
