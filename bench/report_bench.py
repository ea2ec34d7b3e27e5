"""docs/benchmarks.md and its two figures from one run of bench/serving.py.

Long because it is the document's template: each section's table, its ratios against the
baselines and the prose that says which targets were met sit in the order the page reads.
"""

from __future__ import annotations

import argparse
import math
import platform
from importlib.metadata import version
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import psutil
from load import wrk_version
from systems import (
    DEFAULT_PROXY,
    FASTAPI,
    NOOP,
    OIP_BINARY,
    OIP_JSON,
    ONNX,
    RAYSPLIT,
    STEP_AUTOSCALING,
    TEXTBOOK,
    TUNED,
    Scenario,
)

HEADLINE = (RAYSPLIT, ONNX, TUNED, FASTAPI, NOOP)  # the systems of the first table
RAY_PATH = ("HAProxy", "proxies", "controller", "raylet", "GCS", "dashboard", "other")

CURVES = "latency_throughput.png"
STEP = "autoscaling.png"


def _find(scenarios: list[Scenario], system: str, name: str, connections: int) -> Scenario:
    return next(
        s
        for s in scenarios
        if s.system == system and s.name == name and s.connections == connections
    )


def _verdict(ratio: float, goal: float, higher: bool) -> str:
    met = ratio >= goal if higher else ratio <= goal
    return "met" if met else f"**missed** by {abs(ratio - goal) / goal:.0%}"


def _target(label: str, ours: float, theirs: float, goal: float, higher: bool) -> str:
    ratio = ours / theirs
    sign = ">=" if higher else "<="
    verdict = _verdict(ratio, goal, higher)
    return f"| {label} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x | {sign} {goal}x | {verdict} |"


def _single(scenarios: list[Scenario], system: str, connections: int) -> Scenario:
    return _find(scenarios, system, "single row", connections)


def cpu_us(scenario: Scenario) -> float:
    """Server CPU microseconds per request over all of a scenario's runs (bench/cpu.py)."""
    requests = sum(r.requests for r in scenario.runs if r.server_cpu)
    seconds = sum(sum(r.server_cpu.values()) for r in scenario.runs)
    return seconds / requests * 1e6 if requests else math.nan


def cpu_groups_us(scenario: Scenario) -> dict[str, float]:
    requests = sum(r.requests for r in scenario.runs if r.server_cpu)
    groups: dict[str, float] = {}
    for run in scenario.runs:
        for group, seconds in run.server_cpu.items():
            groups[group] = groups.get(group, 0.0) + seconds
    return {g: s / requests * 1e6 for g, s in groups.items()} if requests else {}


def cores(scenario: Scenario) -> float:
    return statistics_median([r.server_cores for r in scenario.runs])


def statistics_median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    return values[len(values) // 2] if values else math.nan


def yardstick_targets(scenarios: list[Scenario]) -> list[str]:
    """Issue 36's goals: against FastAPI serving the same verified ONNX graph, the strongest
    alternative a careful engineer would run."""
    ours32, onnx32, noop32 = (_single(scenarios, s, 32) for s in (RAYSPLIT, ONNX, NOOP))
    ours1, onnx1 = _single(scenarios, RAYSPLIT, 1), _single(scenarios, ONNX, 1)
    return [
        "| target | raysplit | compared with | ratio | goal | |",
        "|---|---:|---:|---:|---:|---|",
        _target(
            "req/s, single row, 32 connections, vs FastAPI + ONNX",
            ours32.median("requests_per_s"),
            onnx32.median("requests_per_s"),
            0.5,
            True,
        ),
        _target(
            "req/s, single row, 32 connections, share of the no-op ceiling",
            ours32.median("requests_per_s"),
            noop32.median("requests_per_s"),
            0.5,
            True,
        ),
        _target(
            "p50 ms, single row, 1 connection, vs FastAPI + ONNX",
            ours1.median("p50_ms"),
            onnx1.median("p50_ms"),
            2.0,
            False,
        ),
        _target(
            "CPU us per prediction, single row, 32 connections, vs FastAPI + ONNX",
            cpu_us(ours32),
            cpu_us(onnx32),
            1.0,
            False,
        ),
        "",
        f"p99 at 1 connection: raysplit {ours1.median('p99_ms'):.1f} ms (goal 5 ms:"
        f" {_verdict(ours1.median('p99_ms'), 5.0, False)}), FastAPI + ONNX"
        f" {onnx1.median('p99_ms'):.1f} ms.",
    ]


def targets(scenarios: list[Scenario]) -> list[str]:
    """The goals of issue 17 (against the tuned baseline and Ray's ceiling), then the
    older ones (the event store's cost, the textbook composition)."""
    ours32, tuned32, noop32 = (_single(scenarios, s, 32) for s in (RAYSPLIT, TUNED, NOOP))
    ours1, tuned1 = _single(scenarios, RAYSPLIT, 1), _single(scenarios, TUNED, 1)
    batch = [_find(scenarios, s, "1000-row batch", 4) for s in (RAYSPLIT, TUNED)]
    oip = [_find(scenarios, RAYSPLIT, name, 4) for name in (OIP_BINARY, OIP_JSON)]
    store_on, store_off = (
        _find(scenarios, RAYSPLIT, f"event store {s}", 32) for s in ("on", "off")
    )
    textbook = _single(scenarios, TEXTBOOK, 32)
    errors = sum(r.errors for s in scenarios if s.system == RAYSPLIT for r in s.runs)
    rps = "requests_per_s"
    return [
        "| target | raysplit | compared with | ratio | goal | |",
        "|---|---:|---:|---:|---:|---|",
        _target(
            "req/s, single row, 32 connections, vs tuned FastAPI",
            ours32.median(rps),
            tuned32.median(rps),
            2.0,
            True,
        ),
        _target(
            "req/s, single row, 32 connections, share of the no-op ceiling",
            ours32.median(rps),
            noop32.median(rps),
            0.5,
            True,
        ),
        _target(
            "p50 ms, single row, 1 connection, vs tuned FastAPI",
            ours1.median("p50_ms"),
            tuned1.median("p50_ms"),
            1.0,
            False,
        ),
        _target(
            "CPU us per prediction, single row, 32 connections, vs tuned FastAPI",
            cpu_us(ours32),
            cpu_us(tuned32),
            1.0,
            False,
        ),
        _target(
            "CPU us per prediction, single row, 1 connection, vs tuned FastAPI",
            cpu_us(ours1),
            cpu_us(tuned1),
            1.0,
            False,
        ),
        _target(
            "p99 ms, single row, 32 connections, vs tuned FastAPI",
            ours32.median("p99_ms"),
            tuned32.median("p99_ms"),
            1.0,
            False,
        ),
        _target(
            "rows/s, 1000-row batches, vs tuned FastAPI",
            batch[0].median(rps) * batch[0].rows,
            batch[1].median(rps) * batch[1].rows,
            1.5,
            True,
        ),
        _target(
            "rows/s, 1000-row batches, OIP binary vs OIP JSON",
            oip[0].median(rps) * oip[0].rows,
            oip[1].median(rps) * oip[1].rows,
            2.0,
            True,
        ),
        _target(
            "req/s, event store on vs off (32 connections, measured back to back)",
            store_on.median(rps),
            store_off.median(rps),
            0.9,
            True,
        ),
        _target(
            "req/s, single row, 32 connections, vs textbook Serve",
            ours32.median(rps),
            textbook.median(rps),
            5.0,
            True,
        ),
        "",
        "The first five and the two batch rows are issue 17's (CPU per prediction at 1",
        "connection is reported with the same goal); the CPU figures are the kernel's",
        "accounting of every serving process, per request served (bench/cpu.py).",
        "",
        f"raysplit answered every request of every scenario: {errors} errors"
        " (non-2xx responses and socket errors, as wrk counts them)."
        if errors == 0
        else f"raysplit had {errors} errors (non-2xx responses and socket errors, as wrk"
        " counts them) over all its scenarios.",
    ]


def headline(scenarios: list[Scenario]) -> list[str]:
    """req/s, latency and CPU per prediction at 1 and 32 connections; ratios to the
    yardstick (FastAPI + ONNX) and shares of the ceiling."""
    tuned = {c: _single(scenarios, ONNX, c) for c in (1, 32)}
    noop = {c: _single(scenarios, NOOP, c) for c in (1, 32)}
    lines = [
        "| system | conns | req/s | p50 ms | p99 ms | CPU us / prediction | server cores"
        " | req/s vs ONNX | CPU vs ONNX | share of ceiling (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system in HEADLINE:
        for c in (1, 32):
            s = _single(scenarios, system, c)
            rps = s.median("requests_per_s")
            lines.append(
                f"| {system} | {c} | {rps:.0f} | {s.median('p50_ms'):.2f} |"
                f" {s.median('p99_ms'):.2f} | {cpu_us(s):.0f} | {cores(s):.2f} |"
                f" {rps / tuned[c].median('requests_per_s'):.2f}x |"
                f" {cpu_us(s) / cpu_us(tuned[c]):.2f}x |"
                f" {rps / noop[c].median('requests_per_s'):.0%} |"
            )
    return lines


def breakdown(scenarios: list[Scenario]) -> list[str]:
    """Where each Ray system's CPU per prediction goes, at 32 connections."""
    systems = [(RAYSPLIT, 32), (NOOP, 32), (RAYSPLIT, 1), (NOOP, 1)]
    systems += [(s, 32) for s in (TEXTBOOK, DEFAULT_PROXY)]
    groups = ["replicas", *RAY_PATH]
    lines = [
        "| system | conns | " + " | ".join(groups) + " | total |",
        "|---|---:|" + "---:|" * (len(groups) + 1),
    ]
    for system, c in systems:
        s = _single(scenarios, system, c)
        spent = cpu_groups_us(s)
        cells = " | ".join(f"{spent.get(g, 0.0):.0f}" for g in groups)
        lines.append(f"| {system} | {c} | {cells} | {cpu_us(s):.0f} |")
    return lines


STORE_COST = [
    "Every prediction is a row the replica hands to its own writer process, which encodes",
    "it and writes it (SQLite here, one writer at a time across the replicas). On this",
    "2-core machine that process's CPU comes from the cores the replicas serve on, so the",
    "store's cost shows up as req/s; `make bench-profile` splits it per request",
    "(docs/profile.md).",
]


def _path_us(spent: dict[str, float]) -> float:
    return sum(v for g, v in spent.items() if g != "replicas")


def _one_worker_runs(scenarios: list[Scenario]) -> list[str]:
    """The tuned baseline's runs that used one of its two uvicorn workers: its workers
    share one listening socket and wrk's keep-alive connections stay on the worker that
    accepted them, so a run can put all of them on one. Said, with raysplit's ratio
    against the baseline's best run, so that no ratio leans on an unlucky run."""
    lines = []
    for tuned in (s for s in scenarios if s.system == TUNED and s.connections > 1):
        lopsided = [r for r in tuned.runs if r.server_cores < 1.3]
        if not lopsided:
            continue
        best = max(r.requests_per_s for r in tuned.runs)
        ours = _find(scenarios, RAYSPLIT, tuned.name, tuned.connections)
        lines.append(
            f"- {tuned.name}, {tuned.connections} connections: {len(lopsided)} of"
            f" {len(tuned.runs)} runs used {', '.join(f'{r.server_cores:.2f}' for r in lopsided)}"
            f" cores; raysplit's median against the baseline's median"
            f" {ours.median('requests_per_s') / tuned.median('requests_per_s'):.2f}x, against"
            f" its best run ({best:.0f} req/s) {ours.median('requests_per_s') / best:.2f}x"
        )
    if not lines:
        return []
    return [
        "**Runs where the tuned baseline used one worker.** uvicorn's two workers share one"
        " listening socket, and wrk's keep-alive connections stay on the worker that"
        " accepted them, so in some runs every connection sat on one worker (about 1 core"
        " used instead of 1.7). That is how the baseline behaves as deployed, and the"
        " medians above include it; the ratios against its best run are the conservative"
        " reading:",
        "",
        *lines,
        "",
    ]


def _binary_oip(scenarios: list[Scenario], wire: dict) -> list[str]:
    """Why binary OIP is not 2x JSON: the wire format is a small part of a 1000-row
    request (bench/wire_cost.py, timed in the benchmark's process)."""
    binary, json = (_find(scenarios, RAYSPLIT, name, 4) for name in (OIP_BINARY, OIP_JSON))
    ratio = binary.median("requests_per_s") / json.median("requests_per_s")
    if ratio >= 2.0 or "json_in" not in wire:
        return []
    json_wire, binary_wire = (
        wire["json_in"] + wire["json_out"],
        wire["binary_in"] + wire["binary_out"],
    )
    request = cpu_us(json)
    best = request / (request - json_wire + wire["binary_in"])
    return [
        f"**Binary OIP against JSON, 1000-row batches.** {ratio:.2f}x (goal 2x:"
        f" {_verdict(ratio, 2.0, True)}). The wire format is a small part of such a request."
        f" Timed alone in the benchmark's process (bench/wire_cost.py, the ingress's own"
        f" code on the bench's bodies), decoding and validating the body costs"
        f" {wire['json_in']:.0f} us as JSON and {wire['binary_in']:.0f} us as binary, and"
        f" building and encoding the answer {wire['json_out']:.0f} us as JSON and"
        f" {wire['binary_out']:.0f} us as binary (most of either is turning the predictor's"
        f" lists into tensors), {json_wire:.0f} against {binary_wire:.0f} us in all; the"
        f" whole request costs {request:.0f} CPU us as JSON (servers' accounting above)."
        f" The binary body is also larger ({wire['binary_bytes']:.0f} bytes of FP64"
        f" against {wire['json_bytes']:.0f} of short decimals). Everything else, the"
        " model call on 1000 rows, 1000 event rows and Ray's path, is the same for both,"
        f" so by this accounting a free answer and the binary decode would be worth about"
        f" {best:.2f}x (measured: {ratio:.2f}x, within the runs' spread); 2x would need the"
        " per-row work, above all the event rows, to halve.",
        "",
    ]


def _p99_tail(scenarios: list[Scenario]) -> list[str]:
    """Why raysplit's p99 at 32 connections is above the tuned baseline's, from this run's
    figures: each run's tail, and the scenarios that rule a cause in or out."""
    ours32, tuned32, ours1, noop1 = (
        _single(scenarios, s, c) for s, c in ((RAYSPLIT, 32), (TUNED, 32), (RAYSPLIT, 1), (NOOP, 1))
    )
    ours, tuned = ours32.median("p99_ms"), tuned32.median("p99_ms")
    if ours <= tuned:
        return []
    store_off = _find(scenarios, RAYSPLIT, "event store off", 32).median("p99_ms")

    def runs(s: Scenario) -> str:
        return ", ".join(f"{r.p99_ms:.0f}" for r in s.runs)

    return [
        f"**p99 at 32 connections.** {ours:.0f} ms against the tuned baseline's"
        f" {tuned:.0f} ms, {_verdict(ours / tuned, 1.0, False)}. Run by run, raysplit's p99"
        f" was {runs(ours32)} ms and the tuned baseline's {runs(tuned32)} ms (the baseline's"
        " tail grows in runs where its connections sit on one worker, below). With the"
        f" event store off raysplit's p99 was {store_off:.0f} ms, so the event writer is not"
        f" the tail. At 1 connection raysplit's p99 is {ours1.median('p99_ms'):.1f} ms for a"
        f" p50 of {ours1.median('p50_ms'):.2f} ms, where the no-op application on the same"
        f" path stays at {noop1.median('p99_ms'):.1f} ms: the tail is pauses inside"
        " raysplit's replicas, not queueing on Ray's path. Replicas freeze their"
        " long-lived objects out of the garbage collector after loading (a full collection"
        " of them took ~130 ms); what still pauses them, this run does not separate.",
        "",
    ]


def missed(scenarios: list[Scenario], model_cost: dict) -> list[str]:
    """By how much each target missed, and what the CPU accounting says holds it back.

    Computed from this run's figures; the event store paragraph is from a profile.
    """
    rps = "requests_per_s"
    ours32, tuned32, noop32 = (_single(scenarios, s, 32) for s in (RAYSPLIT, TUNED, NOOP))
    ours1, tuned1, noop1 = (_single(scenarios, s, 1) for s in (RAYSPLIT, TUNED, NOOP))
    ours, tuned, noop = cpu_us(ours32), cpu_us(tuned32), cpu_us(noop32)
    spent, spent_noop = cpu_groups_us(ours32), cpu_groups_us(noop32)
    model = model_cost.get("onnx", model_cost.get("predict_proba", math.nan))
    extra = spent.get("replicas", 0) - spent_noop.get("replicas", 0)
    lines: list[str] = []
    speedup = ours32.median(rps) / tuned32.median(rps)
    share = ours32.median(rps) / noop32.median(rps)
    if speedup < 2.0 or share < 0.5 or ours > tuned:
        lines += [
            f"**Throughput and CPU at 32 connections.** raysplit served {speedup:.2f}x the"
            f" tuned baseline's req/s (goal 2x: {_verdict(speedup, 2.0, True)}) and"
            f" {share:.0%} of the no-op ceiling's (goal 50%: {_verdict(share, 0.5, True)}),"
            f" at {ours:.0f} CPU us per prediction against the tuned baseline's {tuned:.0f}"
            f" ({_verdict(ours / tuned, 1.0, False)}). The servers used {cores(ours32):.2f}"
            f" (raysplit) and {cores(tuned32):.2f} (tuned) of the machine's 2 cores, with wrk"
            " and whatever else ran on it taking the rest, so req/s here is CPU per"
            " prediction turned upside down: 2x the tuned baseline on the same cores needs"
            f" about {tuned / 2:.0f} us per prediction or less.",
            "",
            f"Where raysplit's {ours:.0f} us go (table below): {spent.get('replicas', 0):.0f}"
            " in the ingress replicas (HTTP in the replica, FastAPI routing, parsing and"
            " validation, the split, the model call, the event write, metrics and the"
            f" request log) and {_path_us(spent):.0f} on Ray's path around them (HAProxy"
            f" {spent.get('HAProxy', 0):.0f}, proxies {spent.get('proxies', 0):.0f},"
            f" controller {spent.get('controller', 0):.0f}, raylet, GCS, dashboard and"
            f" the rest {sum(spent.get(g, 0) for g in RAY_PATH[3:]):.0f}). The no-op"
            f" application on the same path cost {noop:.0f} us per request:"
            f" {spent_noop.get('replicas', 0):.0f} in its replicas and"
            f" {_path_us(spent_noop):.0f} on the path. So Ray's path alone, before any"
            f" work, costs {noop / tuned:.0%} of the tuned baseline's whole prediction, and"
            f" raysplit's replicas spend {extra:.0f}"
            " us per prediction more than a replica that does nothing; the model itself is"
            f" {model:.0f} us a one-row call ({model_cost.get('runtime', '?')}, measured"
            " alone), less per row when `@serve.batch` groups concurrent requests. The"
            " tuned baseline calls scikit-learn as the issue asks"
            f" ({model_cost.get('predict', math.nan):.0f} us a one-row `predict` alone), so"
            " the model is most of its prediction and a small part of raysplit's: raysplit's"
            " cost is the Python around the model in its replicas. `make bench-profile`"
            " breaks that down ([profile.md](profile.md), py-spy on one replica at 32"
            " connections): Ray Serve's own request path in the replica 23%, raysplit's"
            " routing and prediction pipeline 18%, the event writer's SQL 16% (off the"
            " request path, but under the replica's GIL), FastAPI/Starlette 10%, the request"
            " log line 5%, metrics 4%, the model under 2%. No one part is half, so 2x needs"
            " most of them to shrink, and the first, Serve's replica path, is Ray's own.",
            "",
        ]
    p50, p50_tuned, p50_noop = (s.median("p50_ms") for s in (ours1, tuned1, noop1))
    if p50 > p50_tuned:
        lines += [
            f"**p50 at 1 connection.** {p50:.2f} ms against the tuned baseline's"
            f" {p50_tuned:.2f} ms, {_verdict(p50 / p50_tuned, 1.0, False)}. The no-op"
            f" application's p50 on the same path was {p50_noop:.2f} ms: that much is"
            f" Ray's hops (HAProxy, then the replica), and raysplit's work adds"
            f" {p50 - p50_noop:.2f} ms.",
            "",
        ]
    cpu1, cpu1_tuned = cpu_us(ours1), cpu_us(tuned1)
    if cpu1 > cpu1_tuned:
        background = sum(cpu_groups_us(ours1).get(g, 0) for g in RAY_PATH[3:])
        lines += [
            f"**CPU per prediction at 1 connection.** {cpu1:.0f} us against the tuned"
            f" baseline's {cpu1_tuned:.0f}, {_verdict(cpu1 / cpu1_tuned, 1.0, False)}."
            f" One client gets no batching, and the cluster's daemons (raylet, GCS,"
            f" dashboard, metrics agents) cost {background:.0f} us per prediction at this"
            " rate, largely background work that does not grow with requests.",
            "",
        ]
    lines += _p99_tail(scenarios)
    lines += _binary_oip(scenarios, model_cost)
    lines += _one_worker_runs(scenarios)
    on, off = (
        _find(scenarios, RAYSPLIT, f"event store {s}", 32).median(rps) for s in ("on", "off")
    )
    if on / off < 0.9:
        lines += [
            f"**Event store on vs off.** {on / off:.2f}x against a goal of 0.90x.",
            *STORE_COST,
        ]
        lines.append("")
    return lines or ["Every target was met in this run.", ""]


def results(scenarios: list[Scenario]) -> list[str]:
    lines = [
        "| system | scenario | conns | req/s | req/s min-max | rows/s | p50 ms | p99 ms"
        " | CPU us / request | server cores | errors | wrk CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scenarios:
        lines.append(
            f"| {s.system} | {s.name} | {s.connections} | {s.median('requests_per_s'):.0f} |"
            f" {s.spread('requests_per_s')} | {s.median('requests_per_s') * s.rows:.0f} |"
            f" {s.median('p50_ms'):.2f} | {s.median('p99_ms'):.2f} | {cpu_us(s):.0f} |"
            f" {cores(s):.2f} | {sum(r.errors for r in s.runs)} |"
            f" {max(r.generator_cpu for r in s.runs):.0%} |"
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
    for system, marker in (
        (RAYSPLIT, "o"),
        (ONNX, "v"),
        (TUNED, "D"),
        (FASTAPI, "s"),
        (NOOP, "x"),
        (TEXTBOOK, "^"),
    ):
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
    model_cost: dict,
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
        f"- **{ONNX}** (the yardstick): `bench/baselines/fastapi_onnx.py`, the same verified",
        "  `model.onnx` of the champion raysplit serves, one ONNX Runtime session (one thread)"
        f" per worker, an `async def` endpoint, orjson both ways, `uvicorn --workers"
        f" {psutil.cpu_count()}` (uvloop, httptools, no access log); no A/B split, events or"
        " metrics.",
        f"- **{TUNED}**: `bench/baselines/fastapi_tuned.py`, what a user tuning FastAPI would",
        "  run: the champion's registered scikit-learn model loaded once per worker with the",
        "  loader serving uses (`raysplit.core.model_files.read_model`), a NumPy row in",
        "  signature order, a `def` endpoint, `ORJSONResponse`, and `uvicorn --workers"
        f" {psutil.cpu_count()}`",
        "  (one per core, uvloop, httptools, no access log); no A/B split, events or metrics.",
        f"- **{FASTAPI}**: `bench/baselines/fastapi_server.py`, one uvicorn process,",
        "  `mlflow.pyfunc.load_model('models:/iris@champion')`, a pydantic request model,",
        "  a pandas DataFrame per request, an `async def` endpoint; the second line.",
        f"- **{NOOP}**: `bench/baselines/noop_serve.py`, Ray's ceiling: a Serve application",
        "  whose one deployment reads the body and returns a constant JSON, deployed in the",
        "  same run on raysplit's own cluster, behind the same HAProxy and port (route prefix",
        "  `/noop`), with the ingress's `max_ongoing_requests` (64) and autoscaling (1-4",
        "  replicas, 8 ongoing requests each) but 0 logical CPUs, so its replicas and",
        "  raysplit's do not compete for the cluster's 2 logical CPUs; Serve's access log is",
        "  off, as it is for raysplit.",
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
        "  predictions made before the run; OIP: the batch's rows as one `[1000, 4]` FP64",
        "  tensor to `/v2/models/iris/infer`, as JSON, or in the binary tensor extension with",
        "  `binary_data_output` (what `tritonclient` sends by default)",
        "- the 1-connection runs come first, with the ingress at the single replica the",
        "  autoscaler keeps for that load; then raysplit and the no-op were each loaded at 32",
        "  connections for 60 s, so the autoscaler had settled, and the replica counts during",
        "  the other runs are what it chose",
        "- `wrk CPU`: cores the generator itself used (kernel accounting); it never came near",
        "  the 2 threads it had, so wrk was not the limit",
        "- CPU per prediction (`bench/cpu.py`): user + system CPU time, from the kernel's",
        "  accounting (`psutil` `cpu_times()`), of every process serving the system, read",
        "  just before and after each measured run and divided by the requests wrk counted in",
        "  it; for a Ray system every process of the cluster (GCS, raylet, dashboard and",
        "  agents, Serve controller, proxies, HAProxy, replicas) except the replicas of the",
        "  cluster's other applications, idle meanwhile; for a FastAPI baseline the uvicorn",
        "  process and its workers; never wrk. `server cores` is that CPU time over the run's",
        "  wall time. Per scenario: total CPU of its runs over their total requests",
        "- the model alone (the champion, one row, in the benchmark's own process):"
        + "".join(
            f" `{name}` {model_cost[name]:.0f} us;"
            for name in ("predict", "predict_proba", "onnx")
            if name in model_cost
        )
        + f" raysplit's replicas call {model_cost.get('runtime', '?')} for it",
        f"- total benchmark time: {seconds / 60:.0f} min",
        "",
        "## Against the baselines and Ray's ceiling",
        "",
        "Single-row `/predict`, medians of the runs; ratios against FastAPI + ONNX (the",
        "same verified graph) at the same connections, and req/s as a share of the no-op",
        "ceiling's:",
        "",
        *headline(scenarios),
        "",
        "## Against the yardstick: FastAPI + ONNX (issue 36)",
        "",
        *yardstick_targets(scenarios),
        "",
        "## Targets of earlier rounds",
        "",
        *targets(scenarios),
        "",
        "## Where a target is missed",
        "",
        *missed(scenarios, model_cost),
        "## CPU per prediction, by process",
        "",
        "Microseconds of CPU per request served, single-row `/predict`, by group of the",
        "cluster's processes (`other`: Ray's workers and agents not named otherwise):",
        "",
        *breakdown(scenarios),
        "",
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
    text = "\n".join(lines)
    args.output.write_text(text + kept_sections(args.output, text))
    print(f"wrote {args.output}, {docs / CURVES}, {docs / STEP}")


def kept_sections(output: Path, text: str) -> str:
    """Sections of the existing doc that this run does not write (another benchmark's
    summary, such as the experiment report's), kept as they were."""
    if not output.exists():
        return ""
    written = {line for line in text.splitlines() if line.startswith("## ")}
    kept, keeping = [], False
    for line in output.read_text().splitlines():
        if line.startswith("## "):
            keeping = line not in written
        if keeping:
            kept.append(line)
    return "\n" + "\n".join(kept) + "\n" if kept else ""
