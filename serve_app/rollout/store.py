"""The rollouts of an event store, typed with this package's record and log entry."""

from __future__ import annotations

from raysplit.eventstore.rollouts import RolloutStore
from raysplit.eventstore.store import EventStore
from serve_app.rollout.state import DecisionEntry, RolloutRecord

Rollouts = RolloutStore[RolloutRecord, DecisionEntry]


def rollout_store(store: EventStore) -> Rollouts:
    return store.rollouts(RolloutRecord, DecisionEntry)
