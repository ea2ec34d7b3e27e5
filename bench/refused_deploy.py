"""A refused deploy at one replica, measured the way a user meets it (issue 32).

A cluster of its own (`raysplit up`, a champion and a challenger from `raysplit tune`),
serve_config.yaml's iris application as shipped (autoscaling from one replica, which light
load keeps), one client sending a prediction every 50 ms for 60 s. Five seconds in, the
user's own `serve deploy` sends a config whose challenger names an alias that does not
exist; 35 s later a good config again. Counted: answers by status, requests with no answer,
seconds from the bad deploy until ``GET /models`` shows REFUSED, and until it shows the good
config applied again. Measured on the first version: 696 of 745 requests answered 503.

    python bench/refused_deploy.py [--output docs/refused_deploy.md]
"""

from __future__ import annotations

import argparse
import collections
import copy
import subprocess
import threading
import time
from pathlib import Path

import requests
import yaml
from serving import BIN, Cluster

RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
PAUSE_S = 0.05
DURATION_S = 60.0
BAD_AT_S = 5.0
GOOD_AT_S = 40.0


def client(url: str, stop: threading.Event, counts: collections.Counter) -> None:
    session = requests.Session()
    while not stop.is_set():
        try:
            counts[session.post(f"{url}/predict", json=RECORD, timeout=10).status_code] += 1
        except requests.RequestException:
            counts["no answer"] += 1
            session = requests.Session()
        time.sleep(PAUSE_S)


def serve_deploy(cluster: Cluster, user_config: dict, name: str) -> None:
    config = copy.deepcopy(cluster.base)
    config["applications"] = config["applications"][:1]
    config["http_options"]["port"] = cluster.ports["http"]
    config["applications"][0]["deployments"][0]["user_config"] = user_config
    path = cluster.home / name
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [str(BIN / "serve"), "deploy", str(path), "-a", cluster.dashboard],
        env=cluster.env,
        check=True,
        capture_output=True,
    )


def wait_for(url: str, status: str, since: float, timeout_s: float = 60) -> float | None:
    """Seconds from ``since`` until GET /models says ``status``; None if it never does."""
    while time.monotonic() - since < timeout_s:
        try:
            if requests.get(f"{url}/models", timeout=5).json()["deploy"]["status"] == status:
                return time.monotonic() - since
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.25)
    return None


def seconds(value: float | None) -> str:
    return "never (60 s)" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the result as a Markdown table")
    args = parser.parse_args()
    cluster = Cluster()
    try:
        cluster.start()
        good = cluster.base["applications"][0]["deployments"][0]["user_config"]
        bad = copy.deepcopy(good)
        bad["variants"][1]["model_uri"] = "models:/iris@missing"
        serve_deploy(cluster, good, "good.yaml")
        from raysplit.cli.traffic import wait_ready

        wait_ready(cluster.url, 180)
        assert wait_for(cluster.url, "APPLIED", time.monotonic()) is not None
        counts: collections.Counter = collections.Counter()
        stop = threading.Event()
        worker = threading.Thread(target=client, args=(cluster.url, stop, counts))
        started = time.monotonic()
        worker.start()
        time.sleep(BAD_AT_S)
        bad_at = time.monotonic()
        serve_deploy(cluster, bad, "bad.yaml")
        refused_s = wait_for(cluster.url, "REFUSED", bad_at)
        time.sleep(max(0.0, started + GOOD_AT_S - time.monotonic()))
        good_at = time.monotonic()
        serve_deploy(cluster, good, "good-again.yaml")
        applied_s = wait_for(cluster.url, "APPLIED", good_at)
        time.sleep(max(0.0, started + DURATION_S - time.monotonic()))
        stop.set()
        worker.join()
        replicas = requests.get(f"{cluster.url}/models", timeout=5).json()
    finally:
        cluster.down()
    print("answers by status:", dict(counts), flush=True)
    total = sum(counts.values())
    others = {str(k): v for k, v in counts.items() if k != 200}
    failed = total - counts[200]
    rows = [
        ("requests in 60 s (one client, 50 ms pause)", str(total)),
        ("answered 200", str(counts[200])),
        ("failed (non-200 or no answer)", f"{failed} {others or ''}"),
        ("GET /models shows REFUSED after the bad `serve deploy` returned", seconds(refused_s)),
        ("GET /models shows APPLIED after the good `serve deploy` returned", seconds(applied_s)),
        ("the deploy status at the end", replicas["deploy"]["status"]),
    ]
    text = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} by `make bench-refused-deploy`: the shipped"
            " serve_config.yaml's iris application (autoscaling, one replica at this load).",
            "",
            "| one replica, missing alias (`bench/refused_deploy.py`) | |",
            "|---|---|",
            *(f"| {name} | {value} |" for name, value in rows),
        ]
    )
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
