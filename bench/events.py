"""Event-store ingest: N writer processes, each writing batches of prediction and feedback
events through ``EventStore.write`` (rollups on), against PostgreSQL and SQLite.

Each writer sends its own requests' predictions and, one batch later, labels for half of
them, so labels and predictions of the same requests meet across batches as they do across
replicas. Half the predictions are sticky, from a few thousand users who come back, so the
per-user rollup is written as production writes it. Each configuration runs twice in the
same session: with one lock per request id (the store) and with the first version's one
lock for the whole cluster (``--cluster-lock`` patches it back in). Reports events per second
over all writers and the p99 time of one batch write; results go to docs/events.md
(``make bench-events``).

    python bench/events.py [--writers 1 2 4] [--batch 64 256] [--seconds 15]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time
import uuid
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from pg import fresh_database

from raysplit.core.events import AssignmentKind, FeedbackEvent, PredictionEvent
from raysplit.eventstore.store import EventStore

DATABASE = "raysplit_bench_events"
OUT = Path(__file__).resolve().parents[1] / "docs" / "events.md"


USERS = 5000  # sticky users the writers' requests come from
HISTORY = 100_000  # events in the store before the clock starts
HISTORY_DAYS = 30  # spread over a month: a 30-day retention's partitions


def _events(
    prefix: str, batch: int, n: int, rng: np.random.Generator, at: float | None = None
) -> tuple[list, list]:
    now = time.time() if at is None else at
    users = rng.integers(0, USERS, batch)
    predictions = [
        PredictionEvent(
            request_id=f"{prefix}-{n}-{i}",
            experiment="bench",
            variant="champion" if i % 2 else "challenger",
            model_name="iris",
            model_version="1",
            shadow=False,
            inputs=[[5.1, 3.5, 1.4, 0.2]],
            predictions=["setosa"],
            probabilities=None,
            latency_ms=0.5,
            created_at=now,
            assignment=AssignmentKind.STICKY if i % 2 else AssignmentKind.SPLIT,
            allocation="a1",
            unit_hash=f"user-{users[i]}" if i % 2 else None,
        )
        for i in range(batch)
    ]
    labels = [
        FeedbackEvent(request_id=f"{prefix}-{n}-{i}", created_at=now, label="setosa")
        for i in range(0, batch, 2)
    ]
    return predictions, labels


def _cluster_lock(conn: sa.Connection, *_batches: list) -> None:
    """The first version's write lock: one advisory lock for the whole cluster."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x7261797370_6C6975})


def _writer(url: str, batch: int, seconds: float, start: float, out, cluster_lock: bool) -> None:
    if cluster_lock:
        EventStore._lock_requests = staticmethod(_cluster_lock)
    rng = np.random.default_rng()
    store = EventStore(url)
    prefix, n, events, times = uuid.uuid4().hex[:8], 0, 0, []
    pending: list = []
    while time.time() < start:
        time.sleep(0.01)
    while time.time() < start + seconds:
        predictions, labels = _events(prefix, batch, n, rng)
        write = predictions[: batch - len(pending)] + pending  # last batch's labels
        began = time.perf_counter()
        store.write(write)
        times.append(time.perf_counter() - began)
        events += len(write)
        pending, n = labels, n + 1
    store.dispose()
    out.put((events, times))


def _fresh(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        path = tmp / "bench-events.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    return fresh_database(DATABASE)


def _history(url: str, events: int) -> None:
    """A store with history, as production's is: ``events`` written before the clock
    starts, spread over the last ``HISTORY_DAYS`` (on PostgreSQL a partition a day), then
    the planner's statistics taken
    (PostgreSQL's autovacuum does it within a minute; a fresh table's stale estimates
    choose sequential scans)."""
    store = EventStore(url)
    rng = np.random.default_rng(0)
    batches = events // 1000
    start = time.time() - HISTORY_DAYS * 86_400
    for n in range(batches):
        at = start + HISTORY_DAYS * 86_400 * n / batches
        predictions, labels = _events("history", 1000, n, rng, at)
        store.write(predictions + labels)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    store.dispose()


def _busy_jiffies() -> int:
    """The machine's busy CPU time so far, all processes (PostgreSQL's included)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split()[1:8]
    )
    return user + nice + system + irq + softirq


def run(
    kind: str, writers: int, batch: int, seconds: float, tmp: Path, cluster_lock: bool = False
) -> tuple[float, float, float]:
    """Events per second, p99 ms of a batch write, and the machine's CPU us per event."""
    url = _fresh(kind, tmp)
    _history(url, HISTORY)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    start = time.time() + 3  # every writer connected before the clock starts
    processes = [
        context.Process(target=_writer, args=(url, batch, seconds, start, out, cluster_lock))
        for _ in range(writers)
    ]
    for p in processes:
        p.start()
    while time.time() < start:
        time.sleep(0.01)
    busy = _busy_jiffies()
    results = [out.get() for _ in processes]
    busy = _busy_jiffies() - busy
    for p in processes:
        p.join()
    events = sum(r[0] for r in results)
    times = np.concatenate([r[1] for r in results])
    cpu_us = busy / os.sysconf("SC_CLK_TCK") / events * 1e6
    # the store's own rate: each writer's events over its time inside write (the rest of
    # its wall time built the events, which a replica does as it serves)
    in_write = sum(r[0] / sum(r[1]) for r in results)
    return events / seconds, float(np.percentile(times, 99) * 1000), cpu_us, in_write


HOW = """On a 2-core machine two writers and PostgreSQL already keep both cores busy (events/s
times CPU us per event is about two CPU-seconds a second), so four writers cannot add
throughput; what the 4-writer rows show is that they do not collapse, as the cluster-wide
lock's do. Figures move with the machine's load from day to day (the same code measured
about half these on a busier day): compare columns of one run, not runs.

## How a write works

Each batch is one transaction. **No lock wider than its rows:** on PostgreSQL a writer
takes a transaction-scoped advisory lock per request id it writes (sorted, so two batches
sharing requests wait and never deadlock); SQLite has one writer at a time
(`BEGIN IMMEDIATE`). A label scores its prediction in whichever write stores the second of
the two, so a prediction and its label written at once by two replicas are scored exactly
once. The last column is the same run with the first version's single cluster-wide lock
patched back in (`--cluster-lock`).

**Bulk statements, rows encoded once:** keys and labels are copied (PostgreSQL `COPY`;
SQLite one `executemany`) into a per-connection temporary table and moved with one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING`, so a repeat is stored once and
the writer learns which rows are new. On PostgreSQL the keys go to
`raysplit_prediction_keys` (unpartitioned, the columns scoring reads) and the new rows'
raw form is then `COPY`d straight into its day's partition of `raysplit_predictions`
([event_lake.md](event_lake.md)); SQLite's keys are its predictions' own unique key. One
read of the touched requests' stored keys and labels (ids as one array) gives what scoring
needs; each rollup (cells, per-user units, shadow pairs) is one `COPY` (SQLite: one
`executemany`) and one `INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n` in key
order.
SQLAlchemy's many-row `INSERT ... RETURNING` and an expanded `IN` list, which this
replaced, were statement texts psycopg parsed on every write (12 ms of CPU per 256-row
batch).

**The store has history:** each run starts from 100,000 events spread over the last 30
days (on PostgreSQL about 33 day partitions) with the planner's statistics taken, as a
production store has; on a fresh table PostgreSQL's estimates say
"empty" until autovacuum analyses it (within a minute) and the per-batch read scans.

`tests/integration/test_experiment_queries.py` writes predictions, shadows, sticky users,
repeats and feedback in random order from four processes on PostgreSQL and SQLite and
checks every rollup against a recount of the rows and each label scored once; with the
per-request locks taken out it fails (labels scored by neither writer). What to put in
front when one PostgreSQL is not enough: [event_scale.md](event_scale.md)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--stores", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    tmp = Path("/tmp")
    lines = [
        "# Event-store ingest",
        "",
        f"`make bench-events` on {platform.node()}: {multiprocessing.cpu_count()} cores,"
        f" {time.strftime('%Y-%m-%d')}. Writer processes each write batches through"
        " `EventStore.write` with rollups on (predictions, and labels for half of them one"
        " batch later) into a store already holding 100,000 events over 30 days. Events per"
        " second over all writers (wall clock: each writer also builds its events, about"
        " 10 us each); the same"
        " counted over each writer's time inside `write` only; p99 of one batch's write; the"
        " whole machine's busy CPU (PostgreSQL's and the event building too) per event.",
        "",
        "| store | batch | writers | events/s | inside write: events/s | p99 batch ms"
        " | machine CPU us/event | one cluster-wide lock: events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in args.stores:
        for batch in args.batch:
            for writers in args.writers:
                if kind == "sqlite" and writers > 2:
                    continue  # one file, one writer at a time: more processes only queue
                rate, p99, cpu, in_write = run(kind, writers, batch, args.seconds, tmp)
                old = (
                    f"{run(kind, writers, batch, args.seconds, tmp, cluster_lock=True)[0]:,.0f}"
                    if kind == "postgresql"
                    else "-"
                )
                cells = (kind, batch, writers, f"{rate:,.0f}", f"{in_write:,.0f}")
                cells += (f"{p99:.1f}", f"{cpu:.0f}", old)
                lines.append("| " + " | ".join(map(str, cells)) + " |")
                print(lines[-1], flush=True)
    args.out.write_text("\n".join([*lines, "", HOW]) + "\n")


if __name__ == "__main__":
    main()
