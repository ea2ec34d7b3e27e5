"""The rollout, for operators (admin scope): its state and decision log, and the commands
that pause, resume, abort or promote it."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request

from serve_app.replica.base import ReplicaDep, acting_key
from serve_app.replica.rollout_desk import RolloutView, command, rollout_view
from serve_app.replica.rollout_loops import log_entry

router = APIRouter()


@router.get("/rollout", summary="The rollout's state and decision log", response_model=RolloutView)
async def status(replica: ReplicaDep, holds: bool = True, limit: int = 100):
    state = replica.serving()
    store = await replica.store()
    limit = max(1, min(limit, 500))
    return await asyncio.to_thread(rollout_view, store, state, holds, limit)


@router.post(
    "/rollout/{action}",
    summary="Pause, resume, abort or promote the rollout",
    response_model=RolloutView,
)
async def act(
    replica: ReplicaDep, request: Request, action: Literal["pause", "resume", "abort", "promote"]
):
    state = replica.serving()
    store = await replica.store()
    # the decision log names the key that acted (and GET /rollout shows it)
    actor = f"operator {acting_key(request)} via {replica.replica_id}"
    record, entry = await asyncio.to_thread(command, store, state, action, actor)
    log_entry(entry)
    replica.metrics.rollout_decision(entry, record.config.candidate)
    return await asyncio.to_thread(rollout_view, store, state, True, 100)
