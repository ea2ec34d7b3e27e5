"""A real Prometheus for the benchmarks: started on the config `raysplit up` wrote for the
cluster (Ray's service discovery), scraping every 2 s, and queried over its HTTP API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests
import yaml


def start_prometheus(cluster_home: Path, workdir: Path, port: int) -> tuple[subprocess.Popen, str]:
    config = yaml.safe_load((cluster_home / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "2s", "evaluation_interval": "2s"}
    config.pop("rule_files", None)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"http://127.0.0.1:{port}"


def query_range(url: str, expr: str, start: float, end: float, step: str = "5s") -> list[dict]:
    response = requests.get(
        f"{url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["data"]["result"]
