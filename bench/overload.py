"""Overload: more connections than the ingress may run at once, with and without a queue cap.

Each ingress replica runs at most ``max_ongoing_requests`` (64) requests; on the HAProxy
fast path, requests beyond that wait inside the replica until a slot frees, and Serve's
``max_queued_requests`` bounds that wait: past it the replica answers at once with
``backpressure_config.status_code`` (503) and, if ``retry_after_s`` is set, a
``Retry-After`` header. This bench pins the ingress at ``--replicas`` (2: 128 requests
running at most) and measures, round by round and alternating the order:

- the queue unbounded (``max_queued_requests: -1``, Serve's default) and capped
  (``--max-queued`` per replica, ``retry_after_s: 1``);
- each at a normal load (``--normal`` connections) and above capacity (``--overload``,
  256: twice what may run);

wrk drives the load (sticky user keys, bench/load.py's script; a refused request is
retried at once, the worst client); beside it a probe of ``--probe`` threads sends
requests with their own ids and times each answer by status, which gives the accepted
requests' p50/p99 and the time to a 503 apart. After each run the event queues drain and
the store is counted: the rows added against the 200s answered (wrk's plus the probe's,
every probe id looked up), and the writers' ``dropped``.

    python bench/overload.py                 # `make bench-overload`, part of `make bench`
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests
import sqlalchemy as sa
from load import IRIS_RECORD, Run, write_scripts, wrk
from scenario import deploy, foreign_listeners
from serving import REPO, Cluster

from raysplit.eventstore.schema import predictions

UNBOUNDED, CAPPED = "queue unbounded", "queue capped"


@dataclass
class Probe:
    """Per-request answers of the probe threads during one wrk run."""

    accepted_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    retry_after: set[str] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)  # of the accepted ones


@dataclass
class Result:
    config: str
    connections: int
    round: int
    wrk: Run
    accepted_p50_ms: float
    accepted_p99_ms: float
    refused_p50_ms: float
    refused_p99_ms: float
    refused_share: float  # of wrk's answers: non-2xx / all
    probe_refused_share: float
    retry_after: list[str]
    probe_other: dict[str, int]
    answered_200: int  # wrk's 2xx and the probe's 200s
    rows_added: int
    probe_missing: int  # probe ids answered 200 and absent from the store
    dropped: int  # the writers' dropped counter, summed over replicas
    foreign_listeners: list[str]  # see bench/scenario.py: then the counts are not ours


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe(url: str, tag: str, until: float, result: Probe, lock: threading.Lock) -> None:
    with requests.Session() as session:
        n = 0
        while time.monotonic() < until:
            n += 1
            request_id = f"{tag}-{threading.get_ident()}-{n}"
            headers = {"X-Request-Id": request_id, "X-User-Id": f"probe-{n % 1000}"}
            started = time.perf_counter()
            try:
                response = session.post(url, json=IRIS_RECORD, headers=headers, timeout=30)
                kind = str(response.status_code)
            except requests.RequestException as exc:
                response, kind = None, type(exc).__name__
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if kind == "200":
                    result.accepted_ms.append(elapsed)
                    result.ids.append(request_id)
                elif kind == "503":
                    result.refused_ms.append(elapsed)
                    result.retry_after.add(response.headers.get("Retry-After", "(none)"))
                else:
                    result.other[kind] = result.other.get(kind, 0) + 1


def events(url: str) -> dict[str, dict]:
    """``events`` of every replica (GET /models answers from one at a time)."""
    seen = {}
    for _ in range(20):
        body = requests.get(f"{url}/models", timeout=30).json()
        seen[body["replica"]] = body["events"]
    return seen


def drain(url: str) -> dict[str, dict]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = events(url)
        if all(s["queued"] == 0 for s in stats.values()):
            return stats
        time.sleep(2)
    raise RuntimeError("event queues did not drain within 120 s")


def store(cluster: Cluster) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{cluster.home / 'events.db'}")


def rows(cluster: Cluster) -> int:
    """Prediction rows in the event store (no shadow variants are deployed here)."""
    engine = store(cluster)
    try:
        with engine.connect() as db:
            if not sa.inspect(db).has_table(predictions.name):  # created on the first write
                return 0
            return db.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
    finally:
        engine.dispose()


def missing(cluster: Cluster, ids: list[str]) -> int:
    """How many of ``ids`` (answered 200) have no prediction row."""
    engine = store(cluster)
    found: set[str] = set()
    try:
        with engine.connect() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = sa.select(predictions.c.request_id).where(
                    predictions.c.request_id.in_(chunk)
                )
                found.update(db.execute(query).scalars())
    finally:
        engine.dispose()
    return len(set(ids) - found)


def measure(
    cluster: Cluster, config: str, connections: int, round_: int, script: Path, args
) -> Result:
    url = f"{cluster.url}/predict"
    drain(cluster.url)  # the warm-up's and the last run's events, before counting
    before = rows(cluster)
    found = Probe()
    lock = threading.Lock()
    until = time.monotonic() + args.duration
    tag = f"overload-{config.split()[-1]}-{connections}-{round_}"
    threads = [
        threading.Thread(target=probe, args=(url, tag, until, found, lock))
        for _ in range(args.probe)
    ]
    for thread in threads:
        thread.start()
    run = wrk(url, script, connections - args.probe, args.duration)
    for thread in threads:
        thread.join()
    stats = drain(cluster.url)
    added = rows(cluster) - before
    answered = run.requests - run.errors + len(found.accepted_ms)
    probe_total = len(found.accepted_ms) + len(found.refused_ms)
    result = Result(
        config=config,
        connections=connections,
        round=round_,
        wrk=run,
        accepted_p50_ms=percentile(found.accepted_ms, 0.5),
        accepted_p99_ms=percentile(found.accepted_ms, 0.99),
        refused_p50_ms=percentile(found.refused_ms, 0.5),
        refused_p99_ms=percentile(found.refused_ms, 0.99),
        refused_share=run.errors / run.requests if run.requests else float("nan"),
        probe_refused_share=len(found.refused_ms) / probe_total if probe_total else float("nan"),
        retry_after=sorted(found.retry_after),
        probe_other=found.other,
        answered_200=answered,
        rows_added=added,
        probe_missing=missing(cluster, found.ids),
        dropped=sum(s["dropped"] for s in stats.values()),
        foreign_listeners=foreign_listeners(cluster),
    )
    print(
        f"{config} / {connections}c #{round_}: {run.requests_per_s:.0f} req/s,"
        f" refused {result.refused_share:.1%} (probe {result.probe_refused_share:.1%}),"
        f" accepted p50 {result.accepted_p50_ms:.1f} p99 {result.accepted_p99_ms:.1f} ms,"
        f" 503 p50 {result.refused_p50_ms:.1f} p99 {result.refused_p99_ms:.1f} ms,"
        f" Retry-After {result.retry_after}, other {found.other};"
        f" 200s {answered}, rows {added}, probe ids missing {result.probe_missing},"
        f" dropped {result.dropped}"
        + (f" FOREIGN LISTENERS {result.foreign_listeners}" if result.foreign_listeners else ""),
        flush=True,
    )
    return result


def summary(results: list[Result]) -> list[dict]:
    """Medians over rounds of each (config, connections)."""
    table = []
    for key in dict.fromkeys((r.config, r.connections) for r in results):
        runs = [r for r in results if (r.config, r.connections) == key]

        def median(get, runs: list[Result] = runs) -> float:
            return statistics.median(get(r) for r in runs)

        table.append(
            {
                "config": key[0],
                "connections": key[1],
                "rounds": len(runs),
                "requests_per_s": median(lambda r: r.wrk.requests_per_s),
                "refused_share": median(lambda r: r.refused_share),
                "accepted_p50_ms": median(lambda r: r.accepted_p50_ms),
                "accepted_p99_ms": median(lambda r: r.accepted_p99_ms),
                "accepted_p99_ms_range": [
                    min(r.accepted_p99_ms for r in runs),
                    max(r.accepted_p99_ms for r in runs),
                ],
                "refused_p50_ms": median(lambda r: r.refused_p50_ms),
                "refused_p99_ms": median(lambda r: r.refused_p99_ms),
                "wrk_p99_ms_all_answers": median(lambda r: r.wrk.p99_ms),
                "retry_after": sorted({v for r in runs for v in r.retry_after}),
                "answered_200": sum(r.answered_200 for r in runs),
                "rows_added": sum(r.rows_added for r in runs),
                "probe_missing": sum(r.probe_missing for r in runs),
                "dropped": max(r.dropped for r in runs),
            }
        )
    return table


def plot(table: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['config'].split()[-1]}\n{row['connections']} conn." for row in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(labels, [row["accepted_p99_ms"] for row in table], color="tab:blue")
    left.set_ylabel("p99 of accepted requests (ms)")
    right.bar(labels, [row["refused_share"] * 100 for row in table], color="tab:red")
    right.set_ylabel("answers refused with 503 (%)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"overload: {args.replicas} replicas x max_ongoing_requests 64;"
        f" capped = max_queued_requests {args.max_queued}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-queued", type=int, default=32, help="per replica, when capped")
    parser.add_argument("--normal", type=int, default=16, help="connections at normal load")
    parser.add_argument("--overload", type=int, default=256, help="connections above capacity")
    parser.add_argument("--duration", type=int, default=20, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probe", type=int, default=4, help="threads timing single answers")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "overload.png")
    parser.add_argument(
        "--results", type=Path, default=Path(tempfile.gettempdir()) / "raysplit-overload.json"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on kill too
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")

    fixed = {
        "autoscaling_config": {
            "min_replicas": args.replicas,
            "max_replicas": args.replicas,
            "target_ongoing_requests": 8,
        }
    }
    configs = {
        UNBOUNDED: {**fixed, "max_queued_requests": -1},
        CAPPED: {
            **fixed,
            "max_queued_requests": args.max_queued,
            "backpressure_config": {"status_code": 503, "retry_after_s": 1},
        },
    }
    workdir = Path(tempfile.mkdtemp(prefix="raysplit-overload-"))
    script = write_scripts(workdir)["sticky"]
    cluster = Cluster()
    results: list[Result] = []
    try:
        print(f"setting up a cluster in {cluster.home} (two searches, raysplit up)", flush=True)
        cluster.start()
        for round_ in range(args.rounds):
            order = list(configs) if round_ % 2 == 0 else list(configs)[::-1]
            for config in order:
                deploy(cluster, {}, configs[config])
                wrk(f"{cluster.url}/predict", script, args.normal, 5)  # warm both replicas
                for connections in (args.normal, args.overload):
                    results.append(measure(cluster, config, connections, round_ + 1, script, args))
    finally:
        cluster.stop()
    table = summary(results)
    args.results.write_text(
        json.dumps(
            {"summary": table, "runs": [asdict(r) for r in results], "args": vars(args)},
            indent=1,
            default=str,
        )
    )
    plot(table, args.plot, args)
    print(json.dumps(table, indent=1), flush=True)


if __name__ == "__main__":
    main()
