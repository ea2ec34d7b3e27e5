"""The audit trail of API keys: which key acted, when each was last used, what was refused;
and the keys file followed while the replica runs, so keys rotate without a restart.

The guard (:mod:`serve_app.http.guard`) hands every keyed or refused request to
:class:`KeyUse`, which only bumps a dictionary; :class:`KeyAudit` adds the counts to the
event store every few seconds (one upsert per key), where ``GET /keys`` and ``raysplit keys
list`` read them. :class:`KeysFileWatcher` re-reads ``RAYSPLIT_API_KEYS_FILE`` when it
changes (a Kubernetes Secret update swaps the file under its mount): a removed entry stops
working on every replica within :data:`KEYS_WATCH_INTERVAL_S` of the file changing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from raysplit.eventstore.key_use import Tally
from raysplit.eventstore.store import EventStore
from serve_app.config.constants import KEY_USE_FLUSH_S, KEYS_WATCH_INTERVAL_S
from serve_app.http import guard
from serve_app.http.auth import KEYS_FILE_ENV, ApiKeys
from serve_app.replica.loops import Loop

logger = logging.getLogger("ray.serve")


class KeyUse:
    """Per-key counts since the last flush, and the log line of each refusal."""

    def __init__(self) -> None:
        self._counts: dict[str, Tally] = {}

    def __call__(self, key: str | None, status: int, route: str) -> None:
        if status != 200:
            # one line per refused request, naming the key (label or fingerprint of an
            # unknown one, never the key) and the route: the audit trail of refusals
            logger.warning(
                "refused %s: status %d, key %s",
                route,
                status,
                key or "none",
                extra={"key": key, "status": status, "route": route},
            )
        if key is None:
            return
        tally = self._counts.setdefault(key, Tally())
        tally.uses += status == 200
        tally.refused += status != 200
        tally.last_used_at = time.time()
        tally.last_route = route[:256]

    def take(self) -> dict[str, Tally]:
        counts, self._counts = self._counts, {}
        return counts

    def put_back(self, counts: Mapping[str, Tally]) -> None:
        """Counts a flush could not write, merged into those counted since."""
        for key, tally in counts.items():
            mine = self._counts.setdefault(key, Tally())
            mine.uses += tally.uses
            mine.refused += tally.refused
            if tally.last_used_at > mine.last_used_at:
                mine.last_used_at, mine.last_route = tally.last_used_at, tally.last_route


class KeyAudit(Loop):
    """Add what :class:`KeyUse` counted to the event store every few seconds."""

    name = "key audit"

    def __init__(self, use: KeyUse, store: Callable[[], Awaitable[EventStore]]):
        super().__init__()
        self._use = use
        self._store = store

    def interval(self) -> float:
        return KEY_USE_FLUSH_S if guard.SETTINGS.keys.enabled else 0.0

    async def tick(self) -> None:
        counts = self._use.take()
        if not counts:
            return
        try:
            store = await self._store()
            await asyncio.to_thread(store.add_key_use, counts)
        except Exception:
            self._use.put_back(counts)  # for the next try
            raise


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when the file does (a Secret update replaces it: a new inode)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


class KeysFileWatcher(Loop):
    """Re-read the keys when the keys file changes; keep the old ones if it is unreadable
    or malformed (a half-written file must not lock everyone out, nor let everyone in)."""

    name = "keys file watcher"

    def __init__(self, env: Mapping[str, str]):
        super().__init__()
        self._env = dict(env)
        self._path = self._env.get(KEYS_FILE_ENV, "").strip()
        self._seen = file_signature(self._path) if self._path else None

    def interval(self) -> float:
        return KEYS_WATCH_INTERVAL_S if self._path else 0.0

    async def tick(self) -> None:
        signature = file_signature(self._path)
        if signature == self._seen:
            return
        self._seen = signature
        try:
            keys = ApiKeys.from_environment(self._env)
        except ValueError as exc:
            logger.error("keys file changed but is refused, keeping the previous keys: %s", exc)
            return
        before = {e.label for e in guard.SETTINGS.keys.entries}
        guard.SETTINGS.keys = keys
        now = {e.label for e in keys.entries}
        logger.info(
            "keys file re-read: %d keys; added %s, removed %s",
            len(keys.entries),
            sorted(now - before) or "none",
            sorted(before - now) or "none",
        )
