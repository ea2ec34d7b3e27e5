"""The Parquet lake's export and prune rates, against PostgreSQL and SQLite.

Fills a fresh event store with N events (half predictions, each with its label; two
experiments over 60 days) by bulk insert (ingest is bench/events.py's subject, and export
and prune never read the rollups), then times, on each back end:

- ``export`` of every row to a fresh lake (``raysplit export``);
- ``prune`` of every row, archiving first (``raysplit prune``: an export, then deletes
  of 10,000 rows a transaction);
- ``prune --no-archive`` of the same rows written again (the deletes alone);
- reading the lake back: one experiment's labelled rows with pyarrow
  (``labelled_from_lake``, what a retrain reads without Ray), and with ``--ray`` the same
  through Ray Data on a local Ray started for it (``address="local"``, never a running
  cluster), Ray's start-up not included.

Prints a Markdown table for docs/event_lake.md.

    python bench/lake.py [--events 200000] [--backends postgresql sqlite] [--ray]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pg import drop_database, fresh_database

from raysplit.eventstore.lake.archive import export, prune
from raysplit.eventstore.lake.reader import labelled_from_lake
from raysplit.eventstore.schema import feedback, make_engine, predictions
from raysplit.eventstore.store import EventStore

DATABASE = "raysplit_bench_lake"
SPAN_S = 60 * 86_400.0
INSERT_BATCH = 10_000
SPECIES = ("setosa", "versicolor", "virginica")


def _rows(n_predictions: int, now: float, seed: int = 0) -> Iterator[tuple[list, list]]:
    """Batches of prediction and feedback rows, oldest first."""
    rng = np.random.default_rng(seed)
    times = np.sort(now - 3600 - rng.uniform(0, SPAN_S, n_predictions))
    for start in range(0, n_predictions, INSERT_BATCH):
        batch_p, batch_f = [], []
        for i in range(start, min(start + INSERT_BATCH, n_predictions)):
            label = SPECIES[i % 3]
            batch_p.append(
                {
                    "request_id": f"req-{i}",
                    "variant": "champion" if i % 2 else "challenger",
                    "created_at": float(times[i]),
                    "experiment": "iris-ab" if i % 4 else "wine-ab",
                    "model_name": "iris",
                    "model_version": "1",
                    "shadow": False,
                    "inputs": [[float(v) for v in rng.uniform(0, 8, 4).round(2)]],
                    "predictions": [label],
                    "probabilities": [[0.8, 0.1, 0.1]],
                    "latency_ms": 0.5,
                    "outcome": "ok",
                    "assignment": "split",
                    "allocation": "a1",
                    "predicted": label,
                }
            )
            batch_f.append(
                {
                    "request_id": f"req-{i}",
                    "created_at": float(times[i]) + 30.0,
                    "label": label,
                    "label_text": label,
                }
            )
        yield batch_p, batch_f


def fill(url: str, n_events: int, now: float) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(feedback.delete())
        conn.execute(predictions.delete())
    for batch_p, batch_f in _rows(n_events // 2, now):
        with engine.begin() as conn:
            conn.execute(predictions.insert(), batch_p)
            conn.execute(feedback.insert(), batch_f)
    engine.dispose()


def _postgres() -> str:
    return fresh_database(DATABASE)


def _drop_postgres() -> None:
    drop_database(DATABASE)


def _size(path: Path) -> tuple[float, int]:
    files = [f for f in path.rglob("*.parquet")]
    return sum(f.stat().st_size for f in files) / 1e6, len(files)


def _read_with_ray(lake: str, now: float, expected: object) -> float:
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        labelled_from_lake(lake, "iris-ab", None, now, use_ray=True)  # workers warm
        started = time.perf_counter()
        read = labelled_from_lake(lake, "iris-ab", None, now, use_ray=True)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert read.equals(expected), "Ray Data and pyarrow read different rows"
    return read.num_rows / seconds


def run(backend: str, n_events: int, work: Path, with_ray: bool) -> dict[str, float]:
    url = _postgres() if backend == "postgresql" else f"sqlite:///{work / 'events.db'}"
    EventStore(url).dispose()  # the schema, as serving makes it
    try:
        now = time.time()
        fill(url, n_events, now)
        lake = work / f"lake-{backend}"
        started = time.perf_counter()
        exported = export(url, str(lake), None, now)
        export_s = time.perf_counter() - started
        size_mb, files = _size(lake)
        started = time.perf_counter()
        read = labelled_from_lake(str(lake), "iris-ab", None, now, use_ray=False)
        read_s = time.perf_counter() - started
        ray_rate = _read_with_ray(str(lake), now, read) if with_ray else float("nan")

        started = time.perf_counter()
        pruned = prune(url, str(work / f"archive-{backend}"), 60.0, now=now)
        prune_s = time.perf_counter() - started
        assert pruned.predictions + pruned.feedback == n_events, pruned

        fill(url, n_events, now)
        started = time.perf_counter()
        deleted = prune(url, None, 60.0, now=now)
        delete_s = time.perf_counter() - started
        assert deleted.predictions + deleted.feedback == n_events, deleted
    finally:
        if backend == "postgresql":
            _drop_postgres()
    return {
        "exported": exported.predictions + exported.feedback,
        "export_rate": (exported.predictions + exported.feedback) / export_s,
        "export_s": export_s,
        "size_mb": size_mb,
        "files": files,
        "read_rows": read.num_rows,
        "read_rate": read.num_rows / read_s,
        "ray_rate": ray_rate,
        "prune_rate": n_events / prune_s,
        "prune_s": prune_s,
        "delete_rate": n_events / delete_s,
        "delete_s": delete_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--backends", nargs="+", default=["postgresql", "sqlite"])
    parser.add_argument("--ray", action="store_true", help="also read with Ray Data")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raysplit-bench-lake-"))
    try:
        results = {b: run(b, args.events, work, args.ray) for b in args.backends}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.events:,} events ({args.events // 2:,} predictions, each labelled) on"
        f" {platform.machine()}, {platform.python_version()}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| store | export rows/s (s) | lake MB, files | prune, archive first: rows/s (s)"
        " | prune --no-archive: rows/s (s) | labelled rows read/s: pyarrow | Ray Data |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        print(
            f"| {backend} | {r['export_rate']:,.0f} ({r['export_s']:.1f}) |"
            f" {r['size_mb']:.1f}, {r['files']} | {r['prune_rate']:,.0f} ({r['prune_s']:.1f}) |"
            f" {r['delete_rate']:,.0f} ({r['delete_s']:.1f}) |"
            f" {r['read_rate']:,.0f} ({r['read_rows']:,} rows) | {r['ray_rate']:,.0f} |"
        )


if __name__ == "__main__":
    main()
