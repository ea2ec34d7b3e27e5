"""Serving benchmark: raysplit against the two things users would otherwise run, in one run.

1. A cluster of raysplit's own with the flags a user gets from `raysplit up` (HAProxy
   fast path, throughput-optimised Serve), models registered by `raysplit tune`, and the
   shipped `serve_config.yaml` deployed with Ray's CLI; beside it the tuned FastAPI
   baseline (bench/baselines/fastapi_tuned.py: one uvicorn worker per core), the
   seed-style single-process one (bench/baselines/fastapi_server.py) on the same model,
   and Ray's ceiling: a no-op Serve application (bench/baselines/noop_serve.py) on the
   same cluster and HAProxy port. Scenarios of all are interleaved round by round, so a
   noisy machine hits them alike, and every measured run also records the CPU time the
   serving processes spent per request (bench/cpu.py).
2. Memory per ingress replica with 1, 2 and 4 variants, and an autoscaling step load
   (1 -> 64 -> 1 connections) read back from Ray's metrics through a real Prometheus.
3. The same cluster restarted on Ray's default proxy, with the textbook composition
   (bench/baselines/textbook_serve.py) and raysplit side by side.

    python bench/serving.py --output docs/benchmarks.md

One script over 400 lines on purpose: the run is one sequence (cluster, baselines, the
interleaved rounds, the restart on Ray's proxy) that reads top to bottom in ``main``; the
load generator, CPU accounting, baselines and report are modules of their own.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
import yaml
from cpu import ray_cluster, snapshot, tree, used
from load import BATCH_ROWS, FEEDBACK_IDS, IRIS_RECORD, write_scripts, wrk
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
from wire_cost import wire_cost_us

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SWEEP = [1, 4, 16, 32, 64]
STEP_LOAD = [(1, 40), (64, 90), (1, 90)]  # (connections, seconds)


OIP_PATH = "/v2/models/iris/infer"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A raysplit cluster of its own: data directory, ports and models."""

    extra_apps: list[dict]  # deployed beside iris by every `deploy` that names none

    def __init__(self) -> None:
        self.extra_apps = []
        self.home = Path(tempfile.mkdtemp(prefix="raysplit-bench-"))
        self.ports = {
            "ray": free_port(),
            "dashboard": free_port(),
            "metrics": free_port(),
            "http": free_port(),
        }
        self.env = {
            **os.environ,
            "RAYSPLIT_HOME": str(self.home),
            "RAY_AUTH_MODE": "token",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.url = f"http://127.0.0.1:{self.ports['http']}"
        self.dashboard = f"http://127.0.0.1:{self.ports['dashboard']}"
        self.base = yaml.safe_load((REPO / "serve_config.yaml").read_text())

    def run(self, *command: str) -> None:
        subprocess.run(command, env=self.env, check=True, capture_output=True, cwd=REPO)

    def tune(self, alias: str, *options: str) -> None:
        config = str(REPO / "tune" / "configs" / "iris.yaml")
        self.run(str(BIN / "raysplit"), "tune", "--config", config, "--alias", alias, *options)

    def start(self, extra_models: bool = False) -> None:
        """Champion (the default search) and challenger (k-NN); with ``extra_models`` two
        more versions, for the memory scenario's four variants."""
        self.tune("champion")
        self.tune("challenger", "--families", "knn", "--num-samples", "4")
        if extra_models:
            self.tune("forest", "--families", "random_forest", "--num-samples", "2")
            self.tune("boosting", "--families", "hist_gradient_boosting", "--num-samples", "2")
        self.up(fast_path=True)

    def up(self, fast_path: bool) -> None:
        self.run(
            str(BIN / "raysplit"),
            "up",
            f"--port={self.ports['ray']}",
            f"--dashboard-port={self.ports['dashboard']}",
            f"--metrics-export-port={self.ports['metrics']}",
            *([] if fast_path else ["--no-fast-path"]),
        )

    def down(self) -> None:
        subprocess.run([str(BIN / "raysplit"), "down"], env=self.env, capture_output=True)

    def deploy(
        self,
        user_config: dict,
        deployment: dict | None = None,
        extra_apps: list[dict] | None = None,
    ) -> None:
        """`serve deploy` of serve_config.yaml with this cluster's port, ``user_config``
        merged into the ingress's, ``deployment`` options over the shipped ones, and any
        further applications."""
        from raysplit.cli.traffic import wait_ready

        config = copy.deepcopy(self.base)
        config["applications"] = config["applications"][:1]  # iris; the bench trains no diabetes
        config["http_options"]["port"] = self.ports["http"]
        ingress = config["applications"][0]["deployments"][0]
        ingress["user_config"] = {**ingress["user_config"], **user_config}
        ingress.update(deployment or {})
        config["applications"] += self.extra_apps if extra_apps is None else extra_apps
        path = self.home / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        self.run(str(BIN / "serve"), "deploy", str(path), "-a", self.dashboard)
        time.sleep(3)  # the controller applies it asynchronously
        wait_ready(self.url, 180)

    def serving(self, app: str):
        """Processes serving ``app`` on this cluster, for CPU accounting (bench/cpu.py)."""
        from raysplit.cli.cluster import temp_dir_for

        return ray_cluster(temp_dir_for(self.home), app)

    def stop(self) -> None:
        from raysplit.cli.cluster import temp_dir_for

        self.down()
        shutil.rmtree(temp_dir_for(self.home), ignore_errors=True)  # Ray's logs of this run
        shutil.rmtree(self.home, ignore_errors=True)


# NOOP's deployment options are the ingress's in serve_config.yaml but for 0 logical CPUs:
# with 0.5 each, iris' replicas and its would compete for the cluster's 2 logical CPUs and
# neither could scale as it would alone (both still share the same 2 physical cores)
NOOP_APP = {
    "name": "noop",
    "route_prefix": "/noop",
    "import_path": "bench.baselines.noop_serve:app",
    "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
    "logging_config": {"enable_access_log": False},
    "deployments": [
        {
            "name": "Noop",
            "max_ongoing_requests": 64,
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": 4,
                "target_ongoing_requests": 8,
            },
            "ray_actor_options": {"num_cpus": 0},
        }
    ],
}


def seed_style_command(port: int) -> list[str]:
    return [str(BIN / "python"), "-m", "bench.baselines.fastapi_server", f"--port={port}"]


def tuned_command(port: int, module: str = "fastapi_tuned") -> list[str]:
    """uvicorn as its docs advise for production: one worker per core, uvloop, httptools."""
    return [
        *(str(BIN / "python"), "-m", "uvicorn", f"bench.baselines.{module}:app"),
        *("--host=127.0.0.1", f"--port={port}", f"--workers={os.cpu_count()}"),
        *("--loop=uvloop", "--http=httptools", "--no-access-log", "--log-level=warning"),
    ]


def onnx_command(port: int) -> list[str]:
    """The yardstick: the same verified ONNX graph behind FastAPI, run as the tuned one."""
    return tuned_command(port, "fastapi_onnx")


class FastAPIBaseline:
    """A FastAPI baseline as its own process (tree), on the cluster's registry."""

    def __init__(self, cluster: Cluster, command=seed_style_command) -> None:
        port = free_port()
        env = {
            **cluster.env,
            "MODEL_URI": "models:/iris@champion",
            "MLFLOW_TRACKING_URI": f"sqlite:///{cluster.home / 'mlflow.db'}",  # the embedded store
        }
        self.process = subprocess.Popen(command(port), env=env, cwd=REPO)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                requests.post(f"{self.url}/predict", json=IRIS_RECORD, timeout=5).raise_for_status()
                return
            except requests.RequestException:
                time.sleep(1)
        raise RuntimeError("the FastAPI baseline did not start")

    def serving(self) -> list[psutil.Process]:
        return tree(self.process.pid)

    def stop(self) -> None:
        processes = self.serving()
        self.process.terminate()
        self.process.wait(timeout=30)
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            process.kill()


def wait_answering(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.post(url, json=IRIS_RECORD, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def seed_feedback_targets(url: str) -> None:
    """Predictions with known request ids, so /feedback posts refer to real events."""
    with requests.Session() as session:

        def one(i: int) -> None:
            session.post(
                f"{url}/predict", json=IRIS_RECORD, headers={"X-Request-Id": f"bench-{i}"}
            ).raise_for_status()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(FEEDBACK_IDS)))


def measure(
    scenarios: list[Scenario],
    urls: dict[str, str],
    scripts: dict[str, Path],
    args,
    servers: dict,
    deploy=None,
) -> None:
    """Every scenario ``args.repeats`` times, round by round, alternating the order; a
    raysplit scenario with another ``user_config`` is deployed first. ``servers`` lists
    each system's serving processes, whose CPU time is read around every measured run."""
    current: dict | None = None
    for repeat in range(args.repeats):
        for scenario in scenarios if repeat % 2 == 0 else scenarios[::-1]:
            redeploy = scenario.system == RAYSPLIT and scenario.user_config != current
            if deploy is not None and redeploy:
                deploy(scenario.user_config)
                current = scenario.user_config
            url = urls[scenario.system] + scenario.path
            script = scripts[scenario.script]
            wrk(url, script, scenario.connections, args.warmup)
            processes = servers[scenario.system]
            before = snapshot(processes())
            run = wrk(url, script, scenario.connections, args.duration)
            run.server_cpu = used(before, snapshot(processes()))
            scenario.runs.append(run)
            print(
                f"{scenario.system} / {scenario.name} / {scenario.connections}c"
                f" #{repeat + 1}: {run.requests_per_s:.0f} req/s, p50 {run.p50_ms:.2f} ms,"
                f" p99 {run.p99_ms:.2f} ms, {run.cpu_us:.0f} CPU us/req,"
                f" {run.server_cores:.2f} cores, errors {run.errors}",
                flush=True,
            )


def model_cost_us(cluster: Cluster, calls: int = 2000) -> dict[str, float | str]:
    """CPU microseconds of the champion's scikit-learn calls on one row, in this process:
    the floor under any server's CPU per prediction (read with the loader serving uses)."""
    import warnings

    import mlflow
    import mlflow.artifacts
    import numpy as np

    from raysplit.core.model_files import read_model

    warnings.filterwarnings("ignore", message="X does not have valid feature names")
    mlflow.set_tracking_uri(f"sqlite:///{cluster.home / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts("models:/iris@champion"))
    files = read_model(local)
    features = files.description.signature.inputs.input_names()
    row = np.array([[IRIS_RECORD[f] for f in features]], dtype=np.float64)
    costs = {}
    for name in ("predict", "predict_proba"):
        method = getattr(files.estimator, name, None)
        if method is None:
            continue
        method(row)
        started = time.process_time()
        for _ in range(calls):
            method(row)
        costs[name] = (time.process_time() - started) / calls * 1e6
    costs["estimator"] = type(files.estimator).__name__
    # what raysplit's replicas call instead when training verified an ONNX graph of it
    from serve_app.predict.models import compiled_runtime

    graph, reason = compiled_runtime(local / "extra_files", files.estimator)
    costs["runtime"] = "ONNX Runtime" if graph is not None else f"scikit-learn ({reason})"
    if graph is not None:
        graph.run(row)
        started = time.process_time()
        for _ in range(calls):
            graph.run(row)
        costs["onnx"] = (time.process_time() - started) / calls * 1e6
    return costs


def replica_rss_mib() -> list[float]:
    """Resident memory of every raysplit ingress replica process on this machine."""
    sizes = []
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ServeReplica:iris:Ingress" in cmdline:
            sizes.append(process.info["memory_info"].rss / 2**20)
    return sizes


VARIANT_SETS = {
    1: [{"name": "champion", "model_uri": "models:/iris@champion", "weight": 100}],
    2: [
        {"name": "champion", "model_uri": "models:/iris@champion", "weight": 90},
        {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": 10},
    ],
    4: [
        {"name": "champion", "model_uri": "models:/iris@champion", "weight": 70},
        {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": 10},
        {"name": "forest", "model_uri": "models:/iris@forest", "weight": 10},
        {"name": "boosting", "model_uri": "models:/iris@boosting", "weight": 10},
    ],
}


def measure_memory(cluster: Cluster) -> dict[int, list[float]]:
    """RSS per ingress replica after each variant has answered 100 forced requests."""
    memory = {}
    for count, variants in VARIANT_SETS.items():
        cluster.deploy({"variants": variants, "control": "champion"})
        with requests.Session() as session:
            for variant in variants:
                for _ in range(100):
                    session.post(
                        f"{cluster.url}/predict",
                        json=IRIS_RECORD,
                        headers={"X-Variant": variant["name"]},
                    ).raise_for_status()
        time.sleep(2)
        memory[count] = replica_rss_mib()
        print(f"RSS with {count} variant(s): {memory[count]}", flush=True)
    return memory


def step_load(
    cluster: Cluster, workdir: Path, plan: list[tuple[int, int]]
) -> dict[str, list[tuple[float, float]]]:
    """Replicas and p99 over time under 1 -> 64 -> 1 connections, from Ray's metrics."""
    from prom import query_range, start_prometheus

    cluster.deploy({}, {"autoscaling_config": STEP_AUTOSCALING})
    time.sleep(STEP_AUTOSCALING["downscale_delay_s"] + 20)  # back to one replica
    server, prometheus = start_prometheus(cluster.home, workdir, free_port())
    scripts = write_scripts(workdir)
    try:
        time.sleep(10)
        start = time.time()
        for connections, seconds in plan:
            wrk(f"{cluster.url}/predict", scripts["predict"], connections, seconds)
        end = time.time() + 10
        time.sleep(12)
        queries = {
            "replicas": 'sum(ray_serve_deployment_replica_healthy{deployment="Ingress"})',
            "target": 'max(ray_serve_autoscaling_target_replicas{deployment="Ingress"})',
            "p99": "histogram_quantile(0.99, sum by (le)"
            ' (rate(ray_serve_http_request_latency_ms_bucket{application="iris"}[30s])))',
            "rps": 'sum(rate(ray_serve_num_http_requests_total{application="iris"}[30s]))',
        }
        series = {}
        for name, expr in queries.items():
            result = query_range(prometheus, expr, start, end, step="2s")
            series[name] = [
                (float(t) - start, float(v))
                for t, v in (result[0]["values"] if result else [])
                if v not in ("NaN", "+Inf")
            ]
        return series
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds before each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="a short step load, for trying the harness out"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path(tempfile.gettempdir()) / "raysplit-bench-results.pickle",
        help="where the measurements are kept, so --render-only can rewrite the doc",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite the doc from --results; no run"
    )
    args = parser.parse_args()
    if args.render_only:
        from report_bench import render

        *measured, saved, seconds = pickle.loads(args.results.read_bytes())
        saved.output = args.output
        render(*measured, saved, seconds)
        return
    args.step_load = [(1, 10), (64, 20), (1, 10)] if args.quick else STEP_LOAD
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on kill too
    for tool in ("wrk", "prometheus"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install {tool}")

    started = time.monotonic()
    # one connection first, while the ingress is at the one replica the autoscaler keeps
    # for that load; the soak below then scales it for the rest
    idle = [
        Scenario(RAYSPLIT, "single row", "predict", 1),
        Scenario(ONNX, "single row", "predict", 1),
        Scenario(TUNED, "single row", "predict", 1),
        Scenario(FASTAPI, "single row", "predict", 1),
        Scenario(NOOP, "single row", "predict", 1),
    ]
    sweep = [Scenario(RAYSPLIT, "single row", "predict", c) for c in SWEEP[1:]]
    sweep += [Scenario(ONNX, "single row", "predict", c) for c in SWEEP[1:]]
    sweep += [Scenario(TUNED, "single row", "predict", c) for c in SWEEP[1:]]
    sweep += [Scenario(FASTAPI, "single row", "predict", c) for c in SWEEP[1:]]
    sweep += [Scenario(NOOP, "single row", "predict", c) for c in (32, 64)]
    phase1 = [
        *sweep,
        Scenario(RAYSPLIT, f"{BATCH_ROWS}-row batch", "batch", 4, rows=BATCH_ROWS),
        Scenario(ONNX, f"{BATCH_ROWS}-row batch", "batch", 4, rows=BATCH_ROWS),
        Scenario(TUNED, f"{BATCH_ROWS}-row batch", "batch", 4, rows=BATCH_ROWS),
        Scenario(FASTAPI, f"{BATCH_ROWS}-row batch", "batch", 4, rows=BATCH_ROWS),
        # the same rows as one OIP tensor, as JSON and in the binary extension (tritonclient)
        Scenario(RAYSPLIT, OIP_JSON, "oip-json", 4, path=OIP_PATH, rows=BATCH_ROWS),
        Scenario(RAYSPLIT, OIP_BINARY, "oip-binary", 4, path=OIP_PATH, rows=BATCH_ROWS),
        Scenario(RAYSPLIT, "sticky A/B users", "sticky", 32),
        Scenario(RAYSPLIT, "feedback posts", "feedback", 32, path="/feedback"),
        # on and off side by side, each freshly deployed: the pair is measured back to back
        # in every round, so the machine's drift over the run falls on both alike
        Scenario(RAYSPLIT, "event store on", "predict", 32, user_config={"record_events": True}),
        Scenario(RAYSPLIT, "event store off", "predict", 32, user_config={"record_events": False}),
        Scenario(RAYSPLIT, "durable events", "predict", 32, user_config={"durable_events": True}),
        Scenario(RAYSPLIT, "batching off", "predict", 32, user_config={"batch_requests": 1}),
    ]
    phase2 = [
        Scenario(TEXTBOOK, "single row", "predict", 1),
        Scenario(TEXTBOOK, "single row", "predict", 32),
        Scenario(DEFAULT_PROXY, "single row", "predict", 1),
        Scenario(DEFAULT_PROXY, "single row", "predict", 32),
    ]
    workdir = Path(tempfile.mkdtemp(prefix="raysplit-bench-prom-"))
    cluster = Cluster()
    baselines: list[FastAPIBaseline] = []
    try:
        print(f"setting up a cluster in {cluster.home} (four searches, raysplit up)", flush=True)
        cluster.start(extra_models=True)
        cluster.extra_apps = [NOOP_APP]  # the ceiling, beside iris, for the first phase
        cluster.deploy({})
        wait_answering(f"{cluster.url}/noop/predict")
        seed_feedback_targets(cluster.url)
        model_cost = model_cost_us(cluster)
        print(f"model alone, CPU us per one-row call: {model_cost}", flush=True)
        model_cost |= wire_cost_us()
        print(f"OIP wire format alone, CPU us per 1000-row request: {model_cost}", flush=True)
        seed = FastAPIBaseline(cluster)
        baselines.append(seed)
        tuned = FastAPIBaseline(cluster, tuned_command)
        baselines.append(tuned)
        onnx = FastAPIBaseline(cluster, onnx_command)
        baselines.append(onnx)
        scripts = write_scripts(workdir)
        urls = {
            RAYSPLIT: cluster.url,
            NOOP: f"{cluster.url}/noop",
            FASTAPI: seed.url,
            TUNED: tuned.url,
            ONNX: onnx.url,
        }
        servers = {
            RAYSPLIT: cluster.serving("iris"),
            NOOP: cluster.serving("noop"),
            FASTAPI: seed.serving,
            TUNED: tuned.serving,
            ONNX: onnx.serving,
        }
        measure(idle, urls, scripts, args, servers)
        # let autoscaling settle, for raysplit and the ceiling alike
        wrk(f"{cluster.url}/predict", scripts["predict"], 32, 60)
        wrk(f"{cluster.url}/noop/predict", scripts["predict"], 32, 60)
        measure(phase1, urls, scripts, args, servers, deploy=cluster.deploy)
        while baselines:
            baselines.pop().stop()
        cluster.extra_apps = []
        memory = measure_memory(cluster)
        step = step_load(cluster, workdir, args.step_load)
        print("restarting the cluster on Ray's default proxy", flush=True)
        cluster.down()
        cluster.up(fast_path=False)
        textbook = {
            "name": "textbook",
            "route_prefix": "/textbook",
            "import_path": "bench.baselines.textbook_serve:app",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
        }
        cluster.deploy({}, extra_apps=[textbook])
        urls = {TEXTBOOK: f"{cluster.url}/textbook", DEFAULT_PROXY: cluster.url}
        servers = {TEXTBOOK: cluster.serving("textbook"), DEFAULT_PROXY: cluster.serving("iris")}
        wait_answering(f"{cluster.url}/textbook/predict")
        wrk(f"{cluster.url}/textbook/predict", scripts["predict"], 32, 10)
        measure(phase2, urls, scripts, args, servers)
    finally:
        for baseline in baselines:
            baseline.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    measured = (idle + phase1 + phase2, memory, step, model_cost, args)
    args.results.write_bytes(pickle.dumps((*measured, time.monotonic() - started)))
    print(f"measurements kept in {args.results}", flush=True)
    from report_bench import render  # imported last: the run takes a while

    render(*measured, time.monotonic() - started)


if __name__ == "__main__":
    main()
