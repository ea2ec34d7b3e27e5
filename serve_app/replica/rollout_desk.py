"""What operators see of a rollout and how their commands reach it (``GET /rollout``,
``POST /rollout/{action}``, ``raysplit rollout ...``). Blocking (database reads and writes):
the routes run it in a worker thread.

A command is a compare-and-set on the stored record like the controller's decisions, so a
command and a decision taken at the same moment cannot both apply to the same state: the
later one reads the new state and is applied to it (or refused, if it no longer makes
sense).
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from raysplit.eventstore.store import EventStore
from serve_app.config.constants import COMMAND_ATTEMPTS
from serve_app.config.rollout import RolloutConfig
from serve_app.predict.state import ServingState
from serve_app.rollout.state import (
    Action,
    DecisionEntry,
    RolloutConflict,
    RolloutRecord,
    after_action,
    applies,
    log_entry_for,
    weights_differ,
)
from serve_app.rollout.store import rollout_store


class RolloutView(BaseModel):
    """A rollout as the event store holds it and as this replica serves it."""

    experiment: str
    configured: RolloutConfig | None = Field(description="the deployed rollout block")
    rollout: RolloutRecord | None = Field(
        description="the stored state (None before the first replica started it)"
    )
    configured_weights: dict[str, float]
    effective_weights: dict[str, float] = Field(description="what this replica serves")
    why: str | None = Field(description="why the effective weights differ from the configured")
    serving_seq: int | None = Field(description="the record's seq this replica serves")
    decisions: list[DecisionEntry] = Field(description="the decision log, oldest first")


def _weights(state: ServingState, configured: bool) -> dict[str, float]:
    config = state.configured if configured else state.config
    return {v.name: v.weight for v in config.live}


def rollout_view(store: EventStore, state: ServingState, holds: bool, limit: int) -> RolloutView:
    record = rollout_store(store).read(state.configured.experiment)
    decisions = rollout_store(store).decisions(record.rollout_id, limit, holds) if record else []
    return RolloutView(
        experiment=state.configured.experiment,
        configured=state.configured.rollout,
        rollout=record,
        configured_weights=_weights(state, configured=True),
        effective_weights=_weights(state, configured=False),
        why=weights_differ(state.configured, state.rollout),
        serving_seq=state.rollout.seq if state.rollout else None,
        decisions=decisions,
    )


def command(
    store: EventStore, state: ServingState, action: Action, actor: str
) -> tuple[RolloutRecord, DecisionEntry]:
    """Apply an operator's ``action`` to the deployed rollout; raises
    :class:`RolloutConflict` (409) when there is none or its phase does not allow it."""
    rollouts = rollout_store(store)
    for _ in range(COMMAND_ATTEMPTS):
        record = rollouts.read(state.configured.experiment)
        if record is None or not applies(state.configured, record):
            raise RolloutConflict(
                f"experiment '{state.configured.experiment}' has no rollout of the deployed"
                " config (add a `rollout` block to user_config, or wait for it to start)"
            )
        now = time.time()
        after = after_action(record, action, now, actor)
        entry = log_entry_for(record, after, action, actor, now)
        if rollouts.commit(record, after, entry):
            return after, entry
    raise RolloutConflict("the rollout kept changing under the command; try again")
