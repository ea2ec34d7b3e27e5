"""The event writer's database work in a process of its own, off the replica's GIL.

In the replica's own thread, encoding rows, SQLAlchemy and the driver held the replica's
GIL for 11-15% of its busy time (docs/profile.md), and every flush paused the requests
waiting for it. Here the replica only pickles each batch's events into a pipe; a child
process owns the database connection and runs the same :func:`write_isolating` (refused
rows bisected and named, an outage told from a refusal), and sends back which entries
were written, refused or are still to write. The buffer, its order, its durable waiters
and its counts stay in the replica (:class:`serve_app.events.buffer.EventBuffer`).

The replica starts the child as it starts (``spawn``: a forked copy of a Ray worker's
threads is not safe), and the child connects at once: spawned on the first write, it made
that write seconds late on a loaded machine. It ends when its pipe closes: the replica's
shutdown, or its death, since a SIGKILLed replica's end of the pipe closes with it. A
child that dies is started again on the next write; the batch it held comes back as
unwritten, in order.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from raysplit.core.events import Event
from serve_app.events.buffer import WriteOutcome, _Entry, describe, write_isolating

Reply = tuple[list[int], list[tuple[int, str]], list[int], set[str], str | None]
READY = "ready"


def _serve(conn: Connection, url: str) -> None:
    """The child: say it is ready, connect, then write each batch it is sent until the
    pipe closes."""
    from raysplit.eventstore.store import EventStore

    conn.send(READY)
    store: Any = None
    try:
        store = EventStore(url)  # now, not on the first batch: that one should not wait
    except Exception:  # the store is down: the first batch will try again and say why
        store = None
    while True:
        try:
            events: Sequence[Event] = conn.recv()
        except (EOFError, OSError):
            break
        entries = [_Entry(i, event) for i, event in enumerate(events)]
        try:
            if store is None:
                store = EventStore(url)
            outcome = write_isolating(store, entries)
        except Exception as exc:  # could not even connect
            outcome = WriteOutcome(unwritten=entries, error=describe(exc))
        conn.send(
            (
                [e.seq for e in outcome.written],
                [(e.seq, reason) for e, reason in outcome.refused],
                [e.seq for e in outcome.unwritten],
                outcome.new_feedback,
                outcome.error,
            )
        )
    if store is not None:
        store.dispose()


class ProcessWriter:
    """``write_isolating`` for the buffer, run in a child process (thread-safe)."""

    def __init__(self, url: str):
        self.url = url
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the child now and wait until it runs (a replica calls this while it
        starts: a child spawned on the first write made that write seconds late)."""
        with self._lock:
            if not self._alive():
                self._start(ready_timeout_s)

    def _start(self, ready_timeout_s: float = 60.0) -> Connection:
        context = multiprocessing.get_context("spawn")
        mine, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(theirs, self.url), name="raysplit-event-writer", daemon=True
        )
        self._process.start()
        theirs.close()
        self._conn = mine
        if not mine.poll(ready_timeout_s) or mine.recv() != READY:
            self._stop()
            raise OSError(f"the event writer process did not start in {ready_timeout_s:.0f}s")
        return mine

    def __call__(self, entries: list[_Entry]) -> WriteOutcome:
        with self._lock:
            try:
                conn = self._conn if self._alive() else self._start()
                conn.send([entry.event for entry in entries])
                reply: Reply = conn.recv()
            except (EOFError, OSError) as exc:  # the child died: start another next time
                self._stop()
                return WriteOutcome(
                    unwritten=entries, error=f"event writer process ended: {describe(exc)}"
                )
        written, refused, unwritten, new_feedback, error = reply
        return WriteOutcome(
            written=[entries[i] for i in written],
            refused=[(entries[i], reason) for i, reason in refused],
            unwritten=[entries[i] for i in unwritten],
            new_feedback=new_feedback,
            error=error,
        )

    def _alive(self) -> bool:
        return self._conn is not None and self._process.is_alive()

    def _stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    def close(self) -> None:
        """Let the child finish and go (it ends when its pipe closes)."""
        with self._lock:
            self._stop()
