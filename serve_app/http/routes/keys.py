"""The API keys this replica holds and their use, for operators (admin scope): what
``raysplit keys list`` prints. Never a key, nor its full hash."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel

from serve_app.http import guard
from serve_app.replica.base import ReplicaDep

router = APIRouter()


class KeyView(BaseModel):
    key: str  # name, or the fingerprint (8 hex digits of its hash)
    scope: str | None  # None: seen in the audit trail, no longer configured
    expires: datetime | None = None
    expired: bool = False
    last_used_at: float | None = None
    uses: int = 0
    refused: int = 0
    last_route: str | None = None


class KeysView(BaseModel):
    enabled: bool
    keys: list[KeyView]


@router.get("/keys", summary="API keys by name: scope, expiry, last use", response_model=KeysView)
async def keys(replica: ReplicaDep) -> KeysView:
    held = guard.SETTINGS.keys
    try:
        store = await replica.store()
        used = await asyncio.to_thread(store.key_use)
    except Exception:  # the page still lists the keys when the store is away
        used = {}
    now = datetime.now(UTC)
    views = {}
    for entry in held.entries:
        views[entry.label] = KeyView(
            key=entry.label,
            scope=entry.scope.value,
            expires=entry.expires,
            expired=entry.expired(now),
        )
    for label, row in used.items():
        view = views.setdefault(label, KeyView(key=label, scope=None))
        view.last_used_at = row["last_used_at"]
        view.uses, view.refused, view.last_route = row["uses"], row["refused"], row["last_route"]
    return KeysView(enabled=held.enabled, keys=sorted(views.values(), key=lambda v: v.key))
