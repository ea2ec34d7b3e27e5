"""An experiment that lives through traffic moves, over HTTP on a real deployment: a ramp
deployed three times with `serve deploy`, forced QA traffic, sticky users and a shadow
scored on feedback. The first version flagged every ramp as a sample-ratio mismatch,
counted forced requests as randomised and sticky requests instead of users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from tests.integration.serving import Deployer, user_config, variants

pytestmark = pytest.mark.integration

RAYSPLIT = Path(sys.executable).parent / "raysplit"


def mlflow_free(env: dict[str, str]) -> dict[str, str]:
    """The environment without MLflow locations other tests may have left in it: the
    command must find the cluster's own registry from RAYSPLIT_HOME, as a user's would."""
    return {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}


def send(deployer: Deployer, ids: list[str], headers: dict[str, str] | None = None) -> list:
    replies = deployer.load(len(ids), headers=lambda i: {"X-Request-Id": ids[i], **(headers or {})})
    assert {r.status for r in replies} == {200}
    return replies


def feedback(deployer: Deployer, ids: list[str]) -> None:
    body = [{"request_id": rid, "label": "setosa"} for rid in ids]  # RECORD is a setosa
    answer = requests.post(f"{deployer.url}/feedback", json=body, timeout=30).json()
    assert answer == {"accepted": len(ids), "unknown_request_ids": [], "refused": []}


def report_when(deployer: Deployer, name: str, done) -> dict[str, Any]:
    """The report once ``done(report)`` holds (feedback is written off the request path)."""
    deadline = time.monotonic() + 60
    while True:
        report = requests.get(
            f"{deployer.url}/experiment", params={"experiment": name}, timeout=30
        ).json()
        if done(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def test_a_ramp_with_forced_sticky_and_shadow_traffic_keeps_its_evidence(
    deployer: Deployer,
) -> None:
    name = f"ramp-{uuid.uuid4().hex[:6]}"
    live_ids: list[str] = []
    for step, (champion, challenger) in enumerate([(95, 5), (75, 25), (50, 50)]):
        config = user_config(
            experiment=name,
            durable_events=True,
            variants=variants(champion, challenger, shadow=True),
        )
        deployer.deploy(config, cli=True)  # the user's own `serve deploy`
        ids = [f"{name}-{step}-{i}" for i in range(300)]
        send(deployer, ids)
        live_ids += ids
    forced = [f"{name}-qa-{i}" for i in range(200)]
    send(deployer, forced, {"X-Variant": "challenger"})
    users = [f"{name}-user-{u}" for u in range(30)]
    sticky = [f"{name}-sticky-{i}" for i in range(300)]
    deployer.load(300, headers=lambda i: {"X-Request-Id": sticky[i], "X-User-Id": users[i % 30]})
    feedback(deployer, live_ids + forced + sticky)
    labelled = len(live_ids) + len(sticky)
    report = report_when(
        deployer,
        name,
        lambda r: (
            sum(v["feedback"] for v in r["variants"] if not v["shadow"]) == labelled
            and r["shadows"]
            and r["shadows"][0]["pairs"] == labelled
        ),
    )
    logged = subprocess.run(  # while the experiment is served: its versions get tagged
        [str(RAYSPLIT), "report", "--url", deployer.url, "--experiment", name, "--mlflow"],
        env={**mlflow_free(os.environ), **deployer.cluster.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert logged.returncode == 0, logged.stderr
    served = requests.get(f"{deployer.url}/models", timeout=30).json()

    assert report["epochs"] == 3
    srm = report["sample_ratio"]
    assert not srm["flagged"] and report["srm_p_value"] > 0.001, srm
    # each epoch tested against its own weights; the sticky traffic counted in users
    split = [s for s in srm["strata"] if s["assignment"] == "split"]
    assert sorted(sum(s["observed"].values()) for s in split) == [300, 300, 300]
    (by_users,) = [s for s in srm["strata"] if s["assignment"] == "sticky"]
    assert by_users["counted_in"] == "units" and sum(by_users["observed"].values()) == 30
    # forced QA traffic: on its own line, in no comparison and no share
    assert [(f["variant"], f["requests"]) for f in report["forced"]] == [("challenger", 200)]
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["challenger"]["forced"] == 200
    live = by_name["champion"]["assigned"] + by_name["challenger"]["assigned"]
    assert live == 1200 and report["requests"] == 1400
    # every model gets this setosa right: the comparison sees no difference, the shadow's
    # paired verdict is computed on the same labelled requests
    (comparison,) = report["comparisons"]
    assert comparison["metric"] == "accuracy" and comparison["difference"]["estimate"] == 0.0
    assert comparison["verdict"] in {"no detectable difference", "not enough data"}
    (shadow,) = report["shadows"]
    assert shadow["shadow"] == "shadow-hgb" and shadow["pairs"] == labelled
    assert (shadow["live_only"], shadow["shadow_only"]) == (0, 0)
    assert shadow["verdict"] in {"no detectable difference", "not enough data"}
    coverage = {c["variant"]: c["coverage"] for c in report["labels"]["variants"]}
    assert coverage["champion"] == coverage["challenger"] == 1.0
    assert not report["labels"]["flagged"]
    # `raysplit report --mlflow`: the evidence sits next to the models in the registry
    assert f"experiment {name} (classification): 1400 live requests" in logged.stdout
    locations = deployer.cluster.locations
    client = MlflowClient(locations.mlflow_tracking_uri, locations.mlflow_registry_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("raysplit-reports").experiment_id],
        f"tags.`raysplit.experiment` = '{name}'",
    )
    assert run.data.tags["raysplit.verdict.challenger"] == comparison["verdict"]
    assert run.data.metrics["challenger.forced"] == 200
    champion = {v["name"]: v["model"] for v in served["variants"]}["champion"]
    assert run.data.tags["raysplit.model.champion"] == f"{champion['name']}/{champion['version']}"
    version = client.get_model_version(champion["name"], champion["version"])
    assert version.tags["raysplit.report_run"] == run.info.run_id
    stored = client.download_artifacts(run.info.run_id, "report.json")
    assert json.loads(Path(stored).read_text())["experiment"] == name


def per_user_interval(url: str, experiment: str) -> tuple[float, dict[str, int]]:
    """The half-width of a 95% interval for challenger - champion accuracy with each user as
    one unit (delta method on per-user sums), computed here from the raw event rows: the
    report's figure is held against it. Also the users per variant."""
    engine = sa.create_engine(url)
    query = sa.text(
        "SELECT p.variant, p.unit_hash, count(*) AS labelled,"
        " sum(CASE WHEN p.predicted = f.label_text THEN 1 ELSE 0 END) AS correct"
        " FROM raysplit_predictions p JOIN raysplit_feedback f ON f.request_id = p.request_id"
        " WHERE p.experiment = :e AND NOT p.shadow AND p.assignment = 'sticky'"
        " GROUP BY p.variant, p.unit_hash"
    )
    with engine.connect() as conn:
        rows = conn.execute(query, {"e": experiment}).all()
    engine.dispose()
    variance, users = 0.0, {}
    for variant in ("champion", "challenger"):
        x = np.array([r.labelled for r in rows if r.variant == variant], dtype=float)
        y = np.array([r.correct for r in rows if r.variant == variant], dtype=float)
        ratio = y.sum() / x.sum()
        variance += float(np.sum((y - ratio * x) ** 2) / x.sum() ** 2)
        users[variant] = len(x)
    return 1.959964 * variance**0.5, users


def test_an_a_a_on_one_model_version_counts_users_not_requests(deployer: Deployer) -> None:
    """Both arms serve the same model version to 60 sticky users, half of whom agree with
    it 97% of the time and half 35%, 25 requests each. Counted per request the first
    version reported "challenger worse" at p = 6e-20; the report now takes each user as
    the unit: its interval is within 15% of the per-user one computed from the raw rows,
    it says so per stratum, and it finds no difference."""
    name = f"aa-{uuid.uuid4().hex[:6]}"
    same = [
        {"name": "champion", "model_uri": "models:/iris@champion", "weight": 50},
        {"name": "challenger", "model_uri": "models:/iris@champion", "weight": 50},
    ]
    deployer.deploy(user_config(experiment=name, durable_events=True, variants=same))
    rng = np.random.default_rng(620)
    users = [f"aa-user-{u}" for u in range(60)]  # fixed keys: the router's split is fixed
    agree = {u: 0.97 if i % 2 else 0.35 for i, u in enumerate(users)}
    ids = [f"{name}-{u}-{k}" for u in users for k in range(25)]
    owner = [u for u in users for _ in range(25)]
    replies = deployer.load(
        len(ids), headers=lambda i: {"X-Request-Id": ids[i], "X-User-Id": owner[i]}
    )
    assert {r.status for r in replies} == {200}
    body = [
        {"request_id": rid, "label": "setosa" if rng.random() < agree[u] else "versicolor"}
        for rid, u in zip(ids, owner, strict=True)
    ]
    answer = requests.post(f"{deployer.url}/feedback", json=body, timeout=60).json()
    assert answer["accepted"] == len(ids)
    report = report_when(
        deployer, name, lambda r: sum(v["feedback"] for v in r["variants"]) == len(ids)
    )
    (comparison,) = report["comparisons"]
    difference = comparison["difference"]
    reported = (difference["high"] - difference["low"]) / 2
    expected, per_variant = per_user_interval(deployer.cluster.locations.event_store_url, name)
    assert min(per_variant.values()) >= 15, per_variant  # both arms hold users of each kind
    assert abs(reported / expected - 1) <= 0.15, (reported, expected)
    assert {s["unit"] for s in comparison["strata"]} == {"user"}
    assert comparison["design_effect"] > 2  # per request, the interval was far too narrow
    assert comparison["verdict"] != "challenger worse" and comparison["p_value"] > 0.001
