"""Where an ingress replica's CPU goes on the single-row path: py-spy on one replica under wrk.

Requests per second say how fast; a sampling profile of the replica says what to remove.
This starts a cluster of its own as `make bench` does (bench/serving.py's Cluster), pins
the ingress to one replica so every request passes the profiled process, drives
``POST /predict`` with wrk at each connection count, and records the replica with
``py-spy record --nonblocking`` (samples without pausing it, so the profile does not slow
what it measures). Each stack is put in the first part of the request path its frames
name (:data:`PARTS`, innermost first), so the table answers "what share of the replica's
busy time is spent on what", and the leaves list the hottest functions.

    python bench/profile_replica.py --output docs/profile.md
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import write_scripts, wrk
from serving import BIN, REPO, Cluster

# (part, substrings of a frame), matched from the innermost frame outwards: a stack
# belongs to the first part one of its frames names. Model code is checked before the
# serving code that calls it, so a frame inside scikit-learn counts as the model.
PARTS = (
    ("model (onnxruntime / scikit-learn)", ("onnxruntime", "/sklearn/", "/numpy/")),
    (
        "event rows (buffer, SQL writer)",
        ("serve_app/events/", "raysplit/eventstore/", "sqlalchemy"),
    ),
    ("metrics (prometheus, Ray metrics)", ("serve_app/metrics/", "tally.py", "prometheus_client")),
    ("request log line", ("request_log.py", "/logging/")),
    ("validation and schemas (pydantic)", ("schemas.py", "pydantic", "guard.py")),
    ("response encoding (orjson)", ("responses.py", "orjson")),
    ("routing and prediction pipeline", ("serve_app/predict/",)),
    ("FastAPI / Starlette", ("fastapi", "starlette")),
    ("Ray Serve replica and proxy path", ("ray/serve", "ray/_private", "ray/_raylet")),
    ("asyncio event loop", ("asyncio",)),
)
OTHER = "other (interpreter, thread start-up)"
# leaves of a thread that waits: for a socket, a lock or condition, or Ray's core worker
# loop (the actor's main thread parked in C++ while asyncio runs elsewhere)
IDLE_LEAVES = (
    "select ",
    "epoll",
    "Condition.wait",
    "Worker.main_loop",
    "Lock.acquire",
    "_worker (concurrent/futures/thread.py",  # a pool thread waiting on its queue
)
# a thread whose Python frame is only its run(): native code (Ray's core worker, gRPC)
# that py-spy without --native cannot split further
NATIVE = "native code in Python threads (Ray core, gRPC)"


def replica_pid(app: str = "iris") -> int:
    """The pid of the one ingress replica of ``app`` (its process title names it)."""
    for process in psutil.process_iter(["cmdline"]):
        text = " ".join(process.info["cmdline"] or [])
        if f"ServeReplica:{app}:Ingress" in text:
            return process.pid
    raise RuntimeError(f"no ServeReplica:{app}:Ingress process found")


def classify(frames: list[str]) -> str:
    if frames[-1].startswith("Thread.run (threading.py"):
        return NATIVE
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(needle in frame for needle in needles):
                return part
    return OTHER


def summarize(raw: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Samples per part and per leaf function, and the total, from py-spy's raw output
    (one ``frame;frame;...;leaf count`` line per distinct stack)."""
    parts: dict[str, int] = collections.Counter()
    leaves: dict[str, int] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE_LEAVES):
            continue  # a thread waiting for work (or its turn) is not cost
        n = int(count)
        total += n
        parts[classify(frames)] += n
        leaves[frames[-1]] += n
    return parts, leaves, total


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cpu_per_request(
    cluster: Cluster, scripts: dict[str, Path], connections: int, seconds: int
) -> tuple[float, float]:
    """CPU us per answered request in the replica process and in its child processes
    (the event writer), over an unprofiled run: py-spy's sampling is not in it."""
    replica = psutil.Process(replica_pid())
    children = replica.children(recursive=True)
    before = _cpu_s(replica), sum(_cpu_s(c) for c in children)
    run = wrk(f"{cluster.url}/predict", scripts["predict"], connections, seconds)
    after = _cpu_s(replica), sum(_cpu_s(c) for c in children)
    done = run.requests_per_s * seconds
    return 1e6 * (after[0] - before[0]) / done, 1e6 * (after[1] - before[1]) / done


def profile(cluster: Cluster, scripts: dict[str, Path], connections: int, seconds: int, out: Path):
    pid = replica_pid()
    wrk(f"{cluster.url}/predict", scripts["predict"], connections, 3)  # warm up
    recorder = subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(seconds),
         "--rate", "250", "--nonblocking", "--threads", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1)
    run = wrk(f"{cluster.url}/predict", scripts["predict"], connections, seconds - 2)
    recorder.wait(timeout=seconds + 60)
    return run


def render(
    results: dict[int, tuple], threaded: dict[int, tuple[float, float]], output: Path
) -> None:
    lines = [
        "# Where an ingress replica's CPU goes (single row)",
        "",
        "Written by `make bench-profile` (`bench/profile_replica.py`): one ingress replica of"
        " the shipped `serve_config.yaml` (iris, champion/challenger, events, metrics and the"
        " request log on), `POST /predict` with one iris row under wrk, the replica sampled"
        " by `py-spy record --nonblocking` at 250 Hz. Samples of a thread that waits (a"
        " socket, a lock or condition, Ray's core-worker loop) are left out; every other"
        " sample is put in the first part of the request path its stack names, innermost"
        " frame first.",
        "",
    ]
    for connections, (cpu, run, parts, leaves, total) in sorted(results.items()):
        lines += [
            f"## {connections} connection{'s' if connections > 1 else ''}",
            "",
            f"CPU per request, unprofiled run: {cpu[0]:,.0f} us in the replica process,"
            f" {cpu[1]:,.0f} us in its event-writer process; with the writer in a thread of"
            f" the replica (`RAYSPLIT_EVENT_WRITER=thread`, same run)"
            f" {threaded[connections][0]:,.0f} us in the replica.",
            "",
            f"Profiled: {run.requests_per_s:,.0f} req/s, p50 {run.p50_ms:.2f} ms, p99"
            f" {run.p99_ms:.2f} ms; {total:,} busy samples.",
            "",
            "| part of the request path | share of busy samples |",
            "|---|---:|",
        ]
        for part, n in sorted(parts.items(), key=lambda item: -item[1]):
            lines.append(f"| {part} | {100 * n / total:.1f}% |")
        lines += ["", "Hottest leaf functions:", "", "| function | share |", "|---|---:|"]
        for leaf, n in sorted(leaves.items(), key=lambda item: -item[1])[:15]:
            lines.append(f"| `{leaf.replace('|', '/')}` | {100 * n / total:.1f}% |")
        lines.append("")
    output.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "profile.md")
    parser.add_argument("--seconds", type=int, default=20, help="profiled seconds per load")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None or not (BIN / "py-spy").exists():
        sys.exit("wrk or py-spy not found: apt-get install wrk; pip install py-spy")
    cluster = Cluster()
    results, threaded = {}, {}
    try:
        cluster.start()
        with tempfile.TemporaryDirectory() as workdir:
            scripts = write_scripts(Path(workdir))
            # the same replica with its event writer in a thread, as before 2026-12-07
            options = cluster.base["applications"][0]["deployments"][0]["ray_actor_options"]
            in_thread = {"runtime_env": {"env_vars": {"RAYSPLIT_EVENT_WRITER": "thread"}}}
            cluster.deploy(
                {},
                deployment={
                    "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                    "ray_actor_options": {**options, **in_thread},
                },
            )
            for connections in args.connections:
                wrk(f"{cluster.url}/predict", scripts["predict"], connections, 3)  # warm up
                threaded[connections] = cpu_per_request(cluster, scripts, connections, args.seconds)
            cluster.deploy(
                {},
                deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
            )
            for connections in args.connections:
                raw = Path(workdir) / f"profile-{connections}.txt"
                wrk(f"{cluster.url}/predict", scripts["predict"], connections, 3)  # warm up
                cpu = cpu_per_request(cluster, scripts, connections, args.seconds)
                run = profile(cluster, scripts, connections, args.seconds, raw)
                results[connections] = (cpu, run, *summarize(raw))
                print(f"{connections}c: {run.requests_per_s:.0f} req/s", flush=True)
    finally:
        cluster.stop()
    render(results, threaded, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
