"""Soak: an hour of steady sticky traffic, with feedback and a reconfigure every ten minutes.

A leak, a queue that drains slower than it fills, or a reconfigure that leaves something
behind shows only over time, so this holds a modest open-loop load (``--rate`` requests
per second, paced, not as fast as possible) on a cluster of raysplit's own (bench/
serving.py's ``Cluster``: `raysplit up`, two tuned models, the shipped serve_config.yaml):

- every prediction carries a user key (``X-User-Id``, the shipped ``sticky_key``) from a
  pool of ``--users`` and its own ``X-Request-Id``; a ``--feedback`` share of the answered
  ones gets a label posted to ``/feedback`` a couple of seconds later;
- every ``--reconfigure-every`` seconds the challenger's weight flips between 10 and 20
  (a `serve deploy` of a new ``user_config``: replicas apply it in ``reconfigure()``);
- every ``--sample-every`` seconds: the RSS of each ingress replica process (psutil), each
  replica's event queue (``GET /models`` ``events``, polled until every replica answered)
  and the client's p50/p99 and errors over the interval.

At the end the load stops, the queues drain, and the event store is read back: every
acknowledged prediction and feedback must be a row. The series go to ``--plot``
(docs/soak.png) and ``--results`` (docs/soak.json); the summary is printed.

    python bench/soak.py                      # an hour: `make bench-soak`
    python bench/soak.py --duration 180 --settle 60 --reconfigure-every 60   # a try-out

One script of about 450 lines: the load, the samplers and the final read-back share one
clock and one set of request ids, and the plot is drawn from the same series.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil
import sqlalchemy as sa
from load import IRIS_RECORD
from scenario import deploy, foreign_listeners
from serving import REPO, Cluster

from raysplit.eventstore.schema import feedback, predictions

REPLICA = "ServeReplica:iris:Ingress"


@dataclass
class Interval:
    """What the client saw since the last sample."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass
class Sample:
    t: float  # seconds since the load started
    requests: int
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    rss_mib: dict[str, float]  # by replica process id
    queued: dict[str, int]  # by replica id, from GET /models
    written: dict[str, int]
    dropped: dict[str, int]
    foreign_listeners: list[str] = field(default_factory=list)  # others on the ingress port


@dataclass
class Totals:
    predictions: set[str] = field(default_factory=set)  # acknowledged request ids
    feedback: set[str] = field(default_factory=set)
    # request id -> (seconds since the load started, replica that answered, X-Raysplit-Event)
    answered_by: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    unmatched_feedback: int = 0  # answered, but the prediction was not found (yet)
    errors: dict[str, int] = field(default_factory=dict)
    error_bodies: dict[str, str] = field(default_factory=dict)  # the first of each kind
    reconfigures: list[dict] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replica_rss(cluster: Cluster) -> dict[str, float]:
    """RSS (MiB) of this cluster's iris ingress replica processes, by pid (other Ray
    clusters on the machine run replicas of the same name)."""
    sizes = {}
    for process in cluster.serving("iris")():
        with contextlib.suppress(psutil.Error):
            if REPLICA in " ".join(process.cmdline()):
                sizes[str(process.pid)] = process.memory_info().rss / 2**20
    return sizes


async def event_stats(session: aiohttp.ClientSession, url: str, replicas: int) -> dict:
    """``events`` of every replica: GET /models lands on one at a time, so ask until as
    many distinct replicas answered as there are replica processes (or 20 tries)."""
    seen: dict[str, dict] = {}
    for _ in range(20):
        try:
            async with session.get(f"{url}/models") as response:
                body = await response.json()
            seen[body["replica"]] = body["events"]
        except (aiohttp.ClientError, TimeoutError, KeyError):
            pass
        if len(seen) >= replicas:
            break
    return seen


class Soak:
    def __init__(self, cluster: Cluster, args: argparse.Namespace) -> None:
        self.cluster = cluster
        self.args = args
        self.interval = Interval()
        self.totals = Totals()
        self.samples: list[Sample] = []
        self.counter = 0
        self.started = 0.0

    def fail(self, kind: str, body: str = "") -> None:
        self.interval.error(kind)
        self.totals.errors[kind] = self.totals.errors.get(kind, 0) + 1
        self.totals.error_bodies.setdefault(
            kind, f"{time.monotonic() - self.started:.0f} s: {body[:300]}"
        )

    async def feedback(self, session: aiohttp.ClientSession, request_id: str) -> None:
        await asyncio.sleep(2)  # the prediction's event is in the store by then (0.5 s flush)
        body = {"request_id": request_id, "label": "setosa"}
        try:
            async with session.post(f"{self.cluster.url}/feedback", json=body) as response:
                if response.status != 200:
                    self.fail(f"feedback HTTP {response.status}", await response.text())
                    return
                receipt = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.fail(f"feedback {type(exc).__name__}", str(exc))
            return
        if receipt["accepted"] == 1:
            self.totals.feedback.add(request_id)
        else:
            self.totals.unmatched_feedback += 1

    async def predict(self, session: aiohttp.ClientSession, pending: set) -> None:
        self.counter += 1
        request_id = f"soak-{self.counter}"
        headers = {
            "X-Request-Id": request_id,
            "X-User-Id": f"user-{random.randrange(self.args.users)}",
        }
        started = time.perf_counter()
        try:
            async with session.post(
                f"{self.cluster.url}/predict", json=IRIS_RECORD, headers=headers
            ) as response:
                text = await response.text()
                status = response.status
                replica = response.headers.get("X-Raysplit-Replica", "?")
                event = response.headers.get("X-Raysplit-Event", "?")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.fail(f"predict {type(exc).__name__}", str(exc))
            return
        if status != 200:
            self.fail(f"predict HTTP {status}", text)
            return
        self.interval.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.totals.predictions.add(request_id)
        self.totals.answered_by[request_id] = (time.monotonic() - self.started, replica, event)
        if random.random() < self.args.feedback:
            task = asyncio.create_task(self.feedback(session, request_id))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def load(self, session: aiohttp.ClientSession, until: float) -> None:
        """Open loop: one request every 1/rate s whatever the answers take (a slow server
        does not slow the client down, as real users would not)."""
        pending: set[asyncio.Task] = set()
        period = 1 / self.args.rate
        next_at = time.monotonic()
        while next_at < until:
            task = asyncio.create_task(self.predict(session, pending))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        while pending:
            await asyncio.gather(*list(pending))

    async def sample(self, session: aiohttp.ClientSession, until: float) -> None:
        last = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(self.args.sample_every)
            interval, self.interval = self.interval, Interval()
            seconds, last = time.monotonic() - last, time.monotonic()  # longer when starved
            rss = await asyncio.to_thread(replica_rss, self.cluster)
            events = await event_stats(session, self.cluster.url, len(rss))
            latencies = interval.latencies_ms
            self.samples.append(
                Sample(
                    t=time.monotonic() - self.started,
                    requests=len(latencies),
                    p50_ms=percentile(latencies, 0.5),
                    p99_ms=percentile(latencies, 0.99),
                    errors=interval.errors,
                    rss_mib=rss,
                    queued={r: e["queued"] for r, e in events.items()},
                    written={r: e["written"] for r, e in events.items()},
                    dropped={r: e["dropped"] for r, e in events.items()},
                    foreign_listeners=await asyncio.to_thread(foreign_listeners, self.cluster),
                )
            )
            s = self.samples[-1]
            print(
                f"t={s.t:6.0f}s {s.requests / seconds:5.1f} req/s"
                f" p50 {s.p50_ms:6.1f} ms p99 {s.p99_ms:6.1f} ms errors {s.errors}"
                f" rss { ({p: round(m, 1) for p, m in rss.items()}) } queued {s.queued}"
                + (f" FOREIGN LISTENERS {s.foreign_listeners}" if s.foreign_listeners else ""),
                flush=True,
            )

    async def reconfigure(self, until: float) -> None:
        """The challenger's weight flips 10 <-> 20 every period: a new user_config."""
        challenger = 10
        while True:
            await asyncio.sleep(self.args.reconfigure_every)
            if time.monotonic() >= until:
                return
            challenger = 30 - challenger
            weights = {"champion": 100 - challenger, "challenger": challenger}
            variants = [
                {"name": name, "model_uri": f"models:/iris@{name}", "weight": weight}
                for name, weight in weights.items()
            ]
            began = time.monotonic()
            try:
                await asyncio.to_thread(deploy, self.cluster, {"variants": variants})
                outcome = "applied"
            except Exception as exc:  # reported in the results, the soak goes on
                outcome = f"failed: {exc}"
                self.fail("reconfigure")
            self.totals.reconfigures.append(
                {
                    "t": began - self.started,
                    "challenger_weight": challenger,
                    "seconds": time.monotonic() - began,
                    "outcome": outcome,
                }
            )
            print(f"reconfigure: challenger weight {challenger}, {outcome}", flush=True)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.args.connections)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self.started = time.monotonic()
            until = self.started + self.args.duration
            reconfigurer = asyncio.create_task(self.reconfigure(until))
            await asyncio.gather(self.load(session, until), self.sample(session, until))
            reconfigurer.cancel()
            await self.drain(session)

    async def drain(self, session: aiohttp.ClientSession) -> None:
        """Wait until no replica holds queued events (they flush every 0.5 s)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rss = await asyncio.to_thread(replica_rss, self.cluster)
            events = await event_stats(session, self.cluster.url, len(rss))
            if events and all(e["queued"] == 0 for e in events.values()):
                return
            await asyncio.sleep(2)
        print("warning: event queues did not drain within 120 s", flush=True)


def stored(cluster: Cluster) -> tuple[set[str], set[str]]:
    """Request ids of the soak's predictions and feedback rows in the event store."""
    engine = sa.create_engine(f"sqlite:///{cluster.home / 'events.db'}")
    try:
        with engine.connect() as db:
            answered = db.execute(
                sa.select(predictions.c.request_id).where(
                    predictions.c.request_id.like("soak-%"), predictions.c.shadow.is_(False)
                )
            )
            labelled = db.execute(
                sa.select(feedback.c.request_id).where(feedback.c.request_id.like("soak-%"))
            )
            return set(answered.scalars()), set(labelled.scalars())
    finally:
        engine.dispose()


def locate(lost: set[str], answered_by: dict[str, tuple[float, str, str]]) -> dict:
    """When, by whom and with which X-Raysplit-Event lost predictions were answered: a
    loss bunched in one minute or one replica points at a replica's end, one spread evenly
    at the writer."""
    rows = [answered_by[i] for i in lost]
    return {
        "by_minute": dict(sorted(collections.Counter(int(t // 60) for t, _, _ in rows).items())),
        "by_replica": dict(collections.Counter(r for _, r, _ in rows)),
        "by_event": dict(collections.Counter(e for _, _, e in rows)),
    }


def growth(samples: list[Sample], settle: float) -> dict[str, float]:
    """RSS growth (%) of each replica process from the first sample after ``settle`` s to
    the last, for the processes alive at both."""
    after = [s for s in samples if s.t >= settle]
    if len(after) < 2:
        return {}
    first, last = after[0].rss_mib, after[-1].rss_mib
    return {pid: (last[pid] / first[pid] - 1) * 100 for pid in first if pid in last}


def plot(samples: list[Sample], reconfigures: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for pid in sorted({p for s in samples for p in s.rss_mib}):
        points = [(s.t / 60, s.rss_mib[pid]) for s in samples if pid in s.rss_mib]
        axes[0].plot(*zip(*points, strict=True), ".-", markersize=3, label=f"replica pid {pid}")
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].legend(fontsize="small")
    for replica in sorted({r for s in samples for r in s.queued}):
        points = [(s.t / 60, s.queued[replica]) for s in samples if replica in s.queued]
        axes[1].plot(*zip(*points, strict=True), ".", label=f"replica {replica}")
    axes[1].set_ylabel("events queued")
    axes[1].legend(fontsize="small")
    axes[2].plot(minutes, [s.p99_ms for s in samples], ".-", markersize=3, label="p99")
    axes[2].plot(minutes, [s.p50_ms for s in samples], ".-", markersize=3, label="p50")
    axes[2].set_yscale("log")  # a starved interval is seconds, a quiet one milliseconds
    axes[2].set_ylabel("latency per 10 s (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize="small")
    for event in reconfigures:
        for axis in axes:
            axis.axvline(event["t"] / 60, color="grey", linestyle=":", linewidth=1)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of load")
    parser.add_argument("--rate", type=float, default=40, help="predictions per second")
    parser.add_argument("--users", type=int, default=5000, help="distinct sticky user keys")
    parser.add_argument("--feedback", type=float, default=0.2, help="share given a label")
    parser.add_argument("--reconfigure-every", type=float, default=600)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument(
        "--settle", type=float, default=600, help="RSS growth is measured from here on"
    )
    parser.add_argument("--connections", type=int, default=64, help="client connection cap")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "soak.png")
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "docs" / "soak.json",
        help="series and summary as JSON (kept beside the plot: the figures must outlive /tmp)",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw --plot from --results; no run"
    )
    args = parser.parse_args()
    title = (
        f"soak: {args.rate:.0f} req/s sticky users, {args.feedback:.0%} feedback,"
        f" reconfigure every {args.reconfigure_every / 60:.0f} min"
    )
    if args.plot_only:
        saved = json.loads(args.results.read_text())
        samples = [Sample(**s) for s in saved["samples"]]
        plot(samples, saved["summary"]["reconfigures"], args.plot, title)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on kill too

    cluster = Cluster()
    try:
        print(f"setting up a cluster in {cluster.home} (two searches, raysplit up)", flush=True)
        cluster.start()
        deploy(cluster, {})
        soak = Soak(cluster, args)
        asyncio.run(soak.run())
        answered, labelled = stored(cluster)
    finally:
        cluster.stop()

    totals = soak.totals
    lost = totals.predictions - answered
    lost_feedback = totals.feedback - labelled
    samples = soak.samples
    where_lost = locate(lost, totals.answered_by)
    summary = {
        "duration_s": args.duration,
        "rate": args.rate,
        "predictions_acknowledged": len(totals.predictions),
        "predictions_stored": len(answered),
        "predictions_lost": len(lost),
        "feedback_acknowledged": len(totals.feedback),
        "feedback_stored": len(labelled),
        "feedback_lost": len(lost_feedback),
        "predictions_lost_by_minute": where_lost["by_minute"],
        "predictions_lost_by_replica": where_lost["by_replica"],
        "predictions_lost_by_event_header": where_lost["by_event"],
        "predictions_answered_by_replica": dict(
            collections.Counter(r for _, r, _ in totals.answered_by.values())
        ),
        "unmatched_feedback": totals.unmatched_feedback,
        "errors": totals.errors,
        "error_bodies": totals.error_bodies,
        "reconfigures": totals.reconfigures,
        "rss_growth_pct_after_settle": growth(samples, args.settle),
        "p99_ms_median_of_intervals": statistics.median(s.p99_ms for s in samples if s.requests),
        "p99_ms_max_of_intervals": max(s.p99_ms for s in samples if s.requests),
        "queued_max": max((max(s.queued.values(), default=0) for s in samples), default=0),
        "foreign_listeners": sorted({f for s in samples for f in s.foreign_listeners}),
        "dropped_max": max((max(s.dropped.values(), default=0) for s in samples), default=0),
    }
    args.results.write_text(
        json.dumps({"summary": summary, "samples": [asdict(s) for s in samples]}, indent=1)
    )
    plot(samples, totals.reconfigures, args.plot, title)
    print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
    main()
