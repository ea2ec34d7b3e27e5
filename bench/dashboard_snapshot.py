"""Render raysplit's A/B Grafana dashboard from real data, without Grafana.

Starts a cluster of its own (as `make bench` does), a real Prometheus with the config
`raysplit up` writes, sends a few minutes of traffic with feedback, then evaluates the
dashboard's own panel queries (deploy/grafana/dashboards/raysplit_ab.json) through
Prometheus' range API and draws them with matplotlib:

    python bench/dashboard_snapshot.py --output docs/ab_dashboard.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from prom import query_range, start_prometheus
from serving import REPO, Cluster, free_port

from raysplit.cli.traffic import send

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "raysplit_ab.json"
PANELS = [
    "Traffic share per variant",
    "Requests per second by variant and outcome",
    "Model latency per variant (p50, p99)",
    "End-to-end HTTP latency (Ray Serve, p50, p99)",
    "Online accuracy per variant (95% interval)",
    "Always-valid p-value (challenger vs control)",
    "Input drift (PSI) per feature",
    "Replicas",
]


def legend(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def draw(url: str, experiment: str, start: float, end: float, output: Path) -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    figure, axes = plt.subplots(4, 2, figsize=(14, 14))
    for axis, title in zip(axes.flat, PANELS, strict=True):
        panel = panels[title]
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$experiment", experiment)
                .replace("$application", "iris")
                .replace("$__rate_interval", "30s")
            )
            for series in query_range(url, expr, start, end):
                times = [(float(t) - start) / 60 for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axis.plot(times, values, label=legend(target["legendFormat"], series["metric"]))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("minutes", fontsize=8)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7, loc="best")
    figure.suptitle(f"raysplit A/B experiment '{experiment}' (the dashboard's own queries)")
    figure.tight_layout()
    figure.savefig(output, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "ab_dashboard.png")
    parser.add_argument("--minutes", type=float, default=4.0)
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("prometheus not found: apt-get install prometheus")
    workdir = Path(tempfile.mkdtemp(prefix="raysplit-dashboard-"))
    cluster = Cluster()
    server = None
    experiment = "iris-dashboard"
    try:
        cluster.start()
        server, url = start_prometheus(cluster.home, workdir, free_port())
        cluster.deploy({"experiment": experiment, "report_interval_s": 5})
        start = time.time()
        batch = 0
        while time.time() - start < args.minutes * 60:
            batch += 1
            # bursts of varying size, with every label sent back as feedback
            send(cluster.url, "iris", 100 + 150 * (batch % 3), users=40, feedback=True)
            time.sleep(3)
        time.sleep(15)  # the last scrapes and gauge refreshes
        draw(url, experiment, start, time.time(), args.output)
        print(f"wrote {args.output}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
