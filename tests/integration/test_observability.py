"""Metrics, logs and the shipped Prometheus/Grafana files against a real deployment.

Everything is read where an operator would read it: the metrics export endpoints listed in
the service-discovery file Ray writes, the replica log files, a real Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_app.config.ingress import IngressConfig
from serve_app.predict.routing import Router
from tests.conftest import Cluster, free_port
from tests.integration.serving import RECORD, Deployer, user_config, variants

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")


def scrape(cluster: Cluster) -> list[tuple[str, dict[str, str], float]]:
    """Every sample on every target Ray's service-discovery file names."""
    groups = json.loads((cluster.info.temp_dir / "prom_metrics_service_discovery.json").read_text())
    samples = []
    for target in (t for g in groups for t in g["targets"]):
        try:
            text = requests.get(f"http://{target}/metrics", timeout=10).text
        except requests.ConnectionError:
            continue  # a worker's exporter may be starting or gone
        for family in text_string_to_metric_families(text):
            samples.extend((s.name, s.labels, s.value) for s in family.samples)
    return samples


def total(samples, name: str, by: str, **match: str) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for sample, labels, value in samples:
        if sample == name and all(labels.get(k) == v for k, v in match.items()):
            sums[labels.get(by, "")] += value
    return dict(sums)


ROLLOUT_SERIES = "ray_raysplit_rollout_"  # exported once a rollout runs: test_rollout_http


def dashboard_metrics(rollout: bool = False) -> set[str]:
    """Every Ray metric name the shipped Grafana dashboards query: the rollout's with
    ``rollout``, all others without (this module's traffic runs no rollout;
    test_rollout_http.py checks the rollout's during one)."""
    return {
        name
        for path in (DEPLOY / "grafana" / "dashboards").glob("*.json")
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bray_[a-z0-9_]+", target["expr"])
        if name.startswith(ROLLOUT_SERIES) == rollout
    }


@dataclass
class Traffic:
    experiment: str
    request_ids: list[str]
    user_ids: list[str]
    samples: list[tuple[str, dict[str, str], float]]


def users_routed_to(config: dict, wanted: list[str], prefix: str) -> list[str]:
    """One fresh user id per entry of ``wanted`` that the sticky hash sends to that variant."""
    router = Router(IngressConfig.model_validate(config))
    pools: dict[str, list[str]] = defaultdict(list)
    candidates = (f"{prefix}-user-{uuid.uuid4().hex[:8]}" for _ in iter(int, 1))
    while any(len(pools[v]) < wanted.count(v) for v in set(wanted)):
        user = next(candidates)
        pools[router.assign(user, None, 0).variant].append(user)
    return [pools[v].pop() for v in wanted]


@pytest.fixture(scope="module")
def traffic(deployer: Deployer, cluster: Cluster) -> Traffic:
    """60 requests routed to the champion and 40 to the challenger by their users' sticky
    hash, each with its own request id and user id (drift needs 50 rows), a shadow,
    feedback for all, one invalid request; then the export is read until raysplit's
    series show them."""
    name = f"obs-{uuid.uuid4().hex[:6]}"
    config = user_config(experiment=name, report_interval_s=1, variants=variants(50, 50, True))
    deployer.deploy(config)
    wanted = ["champion"] * 60 + ["challenger"] * 40
    users = users_routed_to(config, wanted, name)
    ids = []
    for i, (user, variant) in enumerate(zip(users, wanted, strict=True)):
        rid = f"{name}-req-{uuid.uuid4().hex[:8]}-{i}"
        reply = deployer.predict(RECORD, {"X-Request-Id": rid, "X-User-Id": user})
        assert reply.status == 200 and reply.variant == variant
        ids.append(rid)
    assert requests.post(f"{deployer.url}/predict", json={"nope": 1}, timeout=10).status_code == 422
    feedback = [{"request_id": rid, "label": "setosa"} for rid in ids]
    deployer.history(set(ids), shadow=False)  # written, so feedback finds its variant
    for _ in range(2):  # a client retrying: the store keeps one, the counters count one
        assert requests.post(f"{deployer.url}/feedback", json=feedback, timeout=10).json() == {
            "accepted": 100,
            "unknown_request_ids": [],
            "refused": [],
        }
    expected = {"champion": 60.0, "challenger": 40.0}
    deadline = time.monotonic() + 120
    while True:  # until every series the tests read is exported (or the deadline passes)
        samples = scrape(cluster)
        requests_seen = total(samples, "ray_raysplit_requests_total", "variant", experiment=name)
        feedback_seen = total(samples, "ray_raysplit_feedback_total", "variant", experiment=name)
        # drift needs 50 rows: only the champion (60) has its gauges, the challenger (40) not
        psi = total(
            samples, "ray_raysplit_drift_psi", "feature", experiment=name, variant="champion"
        )
        quality = total(samples, "ray_raysplit_online_quality", "variant", experiment=name)
        served = total(
            samples, "ray_serve_num_http_requests_total", "status_code", application="iris"
        )
        exported = {sample for sample, _, _ in samples}
        complete = (
            dashboard_metrics() <= exported  # some of Ray's series appear only after a while
            and requests_seen == expected
            and feedback_seen == expected
            and set(psi) == set(RECORD)
            and set(quality) == {"champion", "challenger", "shadow-hgb"}
            and served.get("200", 0) >= 100 + 2  # the test's own bar: predictions, 2 posts
        )
        if complete or time.monotonic() > deadline:
            break
        time.sleep(1)
    return Traffic(name, ids, users, samples)


def test_ray_and_raysplit_series_count_the_traffic(traffic: Traffic) -> None:
    samples, name = traffic.samples, traffic.experiment
    assert total(samples, "ray_raysplit_requests_total", "variant", experiment=name) == {
        "champion": 60.0,
        "challenger": 40.0,
    }
    assert total(samples, "ray_raysplit_requests_total", "outcome", experiment=name) == {"ok": 100}
    assert total(samples, "ray_raysplit_feedback_total", "correct", experiment=name) == {
        "true": 100.0
    }  # iris' first record is a setosa every version gets right
    assert total(samples, "ray_raysplit_shadow_predictions_total", "variant", experiment=name) == {
        "shadow-hgb": 100.0
    }
    assert total(samples, "ray_raysplit_predicted_rows_total", "predicted", experiment=name) == {
        "setosa": 100.0
    }
    assert total(samples, "ray_raysplit_rejected_requests_total", "status", experiment=name) == {
        "422": 1.0
    }
    latency = total(samples, "ray_raysplit_model_latency_ms_count", "variant", experiment=name)
    assert latency == {"champion": 60.0, "challenger": 40.0}
    psi = total(samples, "ray_raysplit_drift_psi", "feature", experiment=name, variant="champion")
    assert set(psi) == set(RECORD)
    quality = total(samples, "ray_raysplit_online_quality", "variant", experiment=name)
    assert set(quality) == {"champion", "challenger", "shadow-hgb"}
    # Ray's own Serve series are exported beside them, and saw at least this traffic
    served = total(samples, "ray_serve_num_http_requests_total", "status_code", application="iris")
    assert served.get("200", 0) >= 100 + 2  # predictions and the two feedback posts
    assert total(samples, "ray_serve_http_request_latency_ms_count", "application")["iris"] >= 101
    assert total(samples, "ray_serve_deployment_replica_healthy", "deployment")["Ingress"] == 2


def test_no_request_or_user_id_becomes_a_label(traffic: Traffic) -> None:
    """Every label value of every exported series (Ray's and raysplit's), against the 100
    request ids and 100 user ids the traffic carried: none may appear, even inside a value."""
    values = {v for _, labels, _ in traffic.samples for v in labels.values()}
    assert traffic.experiment in values  # the scrape did see this traffic's series
    identifiers = [*traffic.request_ids, *traffic.user_ids]
    assert len(set(identifiers)) == 200
    leaked = sorted({i for i in identifiers for v in values if i in v})
    assert not leaked, leaked[:5]


def test_haproxy_serves_on_its_clusters_own_metrics_and_stats_ports(
    traffic: Traffic, cluster: Cluster
) -> None:
    """Serve binds HAProxy's metrics and stats at fixed defaults (9101, 8404), which a second
    cluster on the host could not bind; `raysplit up` hands this cluster's its own."""
    info = cluster.info
    assert {info.haproxy_metrics_port, info.haproxy_stats_port}.isdisjoint({9101, 8404, None})
    metrics = requests.get(f"http://127.0.0.1:{info.haproxy_metrics_port}/metrics", timeout=10)
    assert metrics.ok and "haproxy_frontend_http_requests_total" in metrics.text
    stats = requests.get(f"http://127.0.0.1:{info.haproxy_stats_port}/stats", timeout=10)
    assert stats.ok and "HAProxy" in stats.text


def test_every_dashboard_panel_queries_exported_metrics(traffic: Traffic, cluster: Cluster) -> None:
    exported = {name for name, _, _ in traffic.samples}
    dashboards = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["targets"], f"{path.name}: panel '{panel['title']}' has no query"
            for target in panel["targets"]:
                names = set(re.findall(r"\bray_[a-z0-9_]+", target["expr"]))
                assert names, f"{path.name}: '{panel['title']}' queries no Ray metric"
                missing = {n for n in names - exported if not n.startswith(ROLLOUT_SERIES)}
                assert not missing, f"{path.name}: '{panel['title']}' queries unexported {missing}"
    # the provisioning's second folder holds the Serve dashboards Ray generates itself
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    ray_path = next(p for p in provider["providers"] if p["name"] == "ray")["options"]["path"]
    generated = cluster.info.temp_dir / Path(ray_path).relative_to("/tmp/ray")
    assert (generated / "serve_grafana_dashboard.json").is_file()
    assert (generated / "serve_deployment_grafana_dashboard.json").is_file()


def test_request_log_lines_are_json_with_request_id_variant_and_version(
    traffic: Traffic, cluster: Cluster
) -> None:
    logs = cluster.info.temp_dir / "session_latest" / "logs" / "serve"
    lines = {}
    for path in logs.glob("replica_iris_Ingress_*.log"):
        for line in path.read_text().splitlines():
            record = json.loads(line)  # every line is JSON
            if record.get("path") == "/predict" and record.get("request_id") in traffic.request_ids:
                lines[record["request_id"]] = record
    assert set(lines) == set(traffic.request_ids)
    first = lines[traffic.request_ids[0]]
    assert first["variant"] == "champion" and first["model_version"] == "1"
    assert first["status"] == 200 and first["method"] == "POST" and first["duration_ms"] > 0
    assert lines[traffic.request_ids[-1]]["variant"] == "challenger"


def test_promtool_accepts_the_shipped_and_the_rendered_config(cluster: Cluster) -> None:
    assert PROMTOOL, "promtool not found: apt-get install prometheus (make test installs it)"
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 9 rules found" in rules.stdout
    for config in (DEPLOY / "prometheus" / "prometheus.yml", cluster.locations.prometheus_config):
        checked = subprocess.run(
            [PROMTOOL, "check", "config", str(config)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    rendered = yaml.safe_load(cluster.locations.prometheus_config.read_text())
    (discovery,) = rendered["scrape_configs"][0]["file_sd_configs"]
    assert discovery["files"] == [
        str(cluster.info.temp_dir / "prom_metrics_service_discovery.json")
    ]


def test_a_real_prometheus_answers_per_variant_request_rate(
    deployer: Deployer, cluster: Cluster, tmp_path: Path
) -> None:
    """Prometheus with the config `raysplit up` wrote (scraping every second here) finds the
    cluster through Ray's service discovery and answers a PromQL rate per variant."""
    assert PROMETHEUS, "prometheus not found: apt-get install prometheus (make test installs it)"
    config = yaml.safe_load(cluster.locations.prometheus_config.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(cluster.locations.prometheus_config.parent / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    name = f"prom-{uuid.uuid4().hex[:6]}"
    query = f'sum by (variant) (rate(ray_raysplit_requests_total{{experiment="{name}"}}[30s]))'
    try:
        deployer.deploy(user_config(experiment=name))
        rates: dict[str, float] = {}
        for _ in range(90):
            deployer.load(20, threads=2)
            try:
                result = requests.get(f"{url}/api/v1/query", params={"query": query}, timeout=5)
            except requests.ConnectionError:
                time.sleep(1)
                continue
            rates = {
                r["metric"]["variant"]: float(r["value"][1])
                for r in result.json()["data"]["result"]
            }
            if len(rates) == 2 and all(v > 0 for v in rates.values()):
                break
            time.sleep(1)
        assert set(rates) == {"champion", "challenger"} and all(v > 0 for v in rates.values())
        rules = requests.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        assert {r["name"] for g in rules for r in g["rules"]} >= {"RaysplitVariantErrorRate"}
    finally:
        server.terminate()
        server.wait(timeout=30)
