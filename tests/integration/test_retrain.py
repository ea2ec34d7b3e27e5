"""Retraining from production feedback as a Ray job on the session cluster.

Labelled traffic goes through the ingress as a client sends it; ``POST /retrain`` submits
the search through Ray's job API; the job reads those events, registers a version, and
moves the challenger alias only past the gate; replicas follow the alias without a
deploy. The CLI's ``raysplit retrain`` submits the same way and waits.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier

from raysplit.cli.main import main as raysplit
from raysplit.cli.traffic import send
from raysplit.core.retrain_jobs import ACTIVE, job_client, retrain_status, submit_retrain
from raysplit.eventstore.labelled import EventQuery, count_labelled_events
from tests.conftest import Cluster, cluster_registry, kill_server, running_mlflow_server
from tests.integration.serving import Deployer
from tests.models import iris, log_model
from tune.tracking import connect, ensure_experiment

pytestmark = pytest.mark.integration

MODEL = "iris-retrain"
EXPERIMENT = f"retrain-{os.getpid()}"
SEARCH = {  # small: two logistic regressions, three folds
    "experiment": "raysplit-iris-retrain",
    "dataset": {"events": {"min_rows": 500}, "test_size": 0.25},
    "search": {
        "families": {"logistic_regression": {}},
        "num_samples": 2,
        "cv_folds": 3,
        "cpus_per_trial": 0.25,
        "max_concurrent_trials": 1,
        "early_stopping": "none",
    },
    "register": {"gate": {"margin": 0.05}},
}


@pytest.fixture(scope="module")
def registry(cluster: Cluster, deployer: Deployer) -> MlflowClient:
    """iris-retrain v1 (champion) and v2 (challenger): constant models a retrain beats."""
    with cluster_registry(cluster) as (_, experiment):
        x, y = iris()
        for alias in ("champion", "challenger"):
            log_model(DummyClassifier(), x, y, name=MODEL, alias=alias, experiment_id=experiment)
    return MlflowClient(
        cluster.locations.mlflow_tracking_uri, cluster.locations.mlflow_registry_uri
    )


@pytest.fixture(scope="module")
def served(registry: MlflowClient, deployer: Deployer, cluster: Cluster) -> Deployer:
    """The experiment deployed with a retrain config, and 600 labelled predictions in it."""
    deployer.deploy(
        {
            "experiment": EXPERIMENT,
            "salt": "retrain",
            "alias_refresh_s": 1,
            "variants": [
                {"name": "champion", "model_uri": f"models:/{MODEL}@champion", "weight": 50},
                {"name": "challenger", "model_uri": f"models:/{MODEL}@challenger", "weight": 50},
            ],
            "retrain": SEARCH,
        }
    )
    lines = send(deployer.url, "iris", 600, users=40, feedback=True)
    assert " 0 failed" in lines[0], lines
    # feedback is written off the request path: until all 600 pairs are in the store
    query = EventQuery(
        cluster.locations.event_store_url, EXPERIMENT, until=time.time() + 3600, width=4
    )
    deadline = time.monotonic() + 30
    while (rows := count_labelled_events(query).rows) < 600:
        assert time.monotonic() < deadline, f"{rows} of 600 labelled predictions stored"
        time.sleep(0.2)
    return deployer


def wait_job(url: str, job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/retrain/{job_id}", timeout=30).json()
        if body["status"] not in ("PENDING", "RUNNING"):
            return body
        time.sleep(2)
    raise AssertionError(f"retrain job {job_id} did not end within {timeout:.0f}s")


def aliases(client: MlflowClient) -> dict[str, str]:
    return {
        a: str(client.get_model_version_by_alias(MODEL, a).version)
        for a in ("champion", "challenger")
    }


def test_bad_retrains_are_refused_before_anything_is_submitted(served: Deployer) -> None:
    url = served.url
    few = requests.post(
        f"{url}/retrain", json={"dataset": {"events": {"min_rows": 100000}}}, timeout=60
    )
    assert few.status_code == 422, few.text
    assert f"experiment '{EXPERIMENT}' has" in few.json()["detail"]
    assert "fewer than min_rows=100000" in few.json()["detail"]
    unknown = requests.post(
        f"{url}/retrain", json={"dataset": {"events": {"experiment": "no-such-exp"}}}, timeout=60
    )
    assert unknown.status_code == 422, unknown.text
    assert "no-such-exp" in unknown.json()["detail"] and EXPERIMENT in unknown.json()["detail"]
    missing = requests.get(f"{url}/retrain/raysplit-retrain-nothing-0", timeout=30)
    assert missing.status_code == 404, missing.text


def test_a_retrain_job_registers_a_better_challenger_that_serving_follows(
    served: Deployer, registry: MlflowClient, cluster: Cluster
) -> None:
    before = aliases(registry)
    response = requests.post(f"{served.url}/retrain", json={}, timeout=60)
    assert response.status_code == 202, response.text
    submitted = response.json()
    assert submitted["model"] == MODEL and submitted["experiment"] == EXPERIMENT
    assert submitted["labelled_rows"] >= 500
    again = requests.post(f"{served.url}/retrain", json={}, timeout=60)
    assert again.status_code == 409, again.text
    assert "already running" in again.json()["detail"]

    job = wait_job(served.url, submitted["job_id"])
    assert job["status"] == "SUCCEEDED", job
    listed = {
        j.submission_id: str(j.status.value)
        for j in job_client(cluster.info.dashboard_url).list_jobs()
    }
    assert listed[submitted["job_id"]] == "SUCCEEDED"  # what the dashboard's Jobs tab shows
    outcome = job["outcome"]
    assert outcome["promoted"] and outcome["alias"] == "challenger", outcome
    version = outcome["version"]
    assert aliases(registry) == {"champion": before["champion"], "challenger": version}
    tags = registry.get_model_version(MODEL, version).tags
    assert tags["raysplit.gate"] == "promoted"
    assert tags["raysplit.events.experiment"] == EXPERIMENT
    assert int(tags["raysplit.events.rows"]) >= 500
    run = registry.get_run(outcome["search_run_id"])
    assert run.data.tags["raysplit.events.url"].startswith("sqlite:///")
    assert run.data.tags["raysplit.events.until"] != "none"
    assert [i.dataset.source_type for i in run.inputs.dataset_inputs] == [
        "raysplit_event_store",
        "raysplit_event_store",
    ]

    deadline = time.monotonic() + 60  # every replica re-resolves the alias, no deploy
    while True:
        replies = served.load(40, headers=lambda i: {"X-Variant": "challenger"})
        if {r.body["model"]["version"] for r in replies} == {version}:
            break
        assert time.monotonic() < deadline, {r.body["model"]["version"] for r in replies}
        time.sleep(1)


def test_a_retrain_that_is_not_better_moves_no_alias_and_a_failed_one_says_why(
    served: Deployer,
    registry: MlflowClient,
    cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster.locations.mlflow_tracking_uri)
    before = aliases(registry)
    config = {
        **SEARCH,
        "dataset": {"events": {"experiment": EXPERIMENT, "min_rows": 500}, "test_size": 0.25},
        "register": {"model_name": MODEL, "gate": {"margin": 0.05}},
    }
    path = tmp_path / "retrain.yaml"
    path.write_text(yaml.safe_dump(config))
    address = ["--address", cluster.info.dashboard_url]
    code = raysplit(["retrain", "--config", str(path), "--wait", *address])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "SUCCEEDED" in printed and "no alias moved" in printed, printed
    assert "below the margin 0.05" in printed
    assert aliases(registry) == before
    newest = max(int(v.version) for v in registry.search_model_versions(f"name='{MODEL}'"))
    tags = registry.get_model_version(MODEL, str(newest)).tags
    assert tags["raysplit.gate"] == "not_promoted"
    assert "@challenger" in tags["raysplit.gate_reason"]

    # the CLI validates the whole config before submitting
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "search": {**SEARCH["search"], "cv_folds": 1}}))
    assert raysplit(["retrain", "--config", str(bad), *address]) == 2
    assert "search.cv_folds" in capsys.readouterr().err

    # the ingress cannot (it does not import training code): the job's driver refuses it,
    # the job fails with the reason and no alias moves
    response = requests.post(f"{served.url}/retrain", json={"search": {"cv_folds": 1}}, timeout=60)
    assert response.status_code == 202, response.text
    job = wait_job(served.url, response.json()["job_id"])
    assert job["status"] == "FAILED", job
    assert "search.cv_folds" in job["error"], job
    assert job["outcome"] is None
    assert aliases(registry) == before


def test_a_job_whose_tracking_server_stops_mid_search_fails_and_moves_no_alias(
    served: Deployer, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search logs to a real tracking server that is killed once the search's run
    exists: the job ends FAILED, names the failure, and (the server back) no alias moved."""
    backend = f"sqlite:///{tmp_path / 'tracking.db'}"
    config = {
        **SEARCH,
        "experiment": "raysplit-iris-retrain-server",
        "dataset": {"events": {"experiment": EXPERIMENT, "min_rows": 500}, "test_size": 0.25},
        "register": {"model_name": MODEL, "gate": {"margin": 0.05}},
    }
    with running_mlflow_server(backend, tmp_path) as (uri, server):
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.setenv(name, uri)
        client = connect(cluster.locations.model_copy(
            update={"mlflow_tracking_uri": uri, "mlflow_registry_uri": uri}
        ))  # fmt: skip
        experiment = ensure_experiment(client, "raysplit-iris-server", cluster.locations)
        x, y = iris()
        for alias in ("champion", "challenger"):
            log_model(DummyClassifier(), x, y, name=MODEL, alias=alias, experiment_id=experiment)
        jobs = job_client(cluster.info.dashboard_url)
        # MLflow's client retries a refused connection for minutes by default; once is enough
        retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        job_id = submit_retrain(
            jobs, config, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, **retries}
        )
        deadline = time.monotonic() + 180
        while not (search := client.get_experiment_by_name(config["experiment"])) or not (
            client.search_runs([search.experiment_id])
        ):
            assert retrain_status(jobs, job_id).status in ACTIVE, "the job ended before its run"
            assert time.monotonic() < deadline, "the search's run never appeared"
            time.sleep(0.5)
        kill_server(server)
        deadline = time.monotonic() + 300
        while (job := retrain_status(jobs, job_id)).status in ACTIVE:
            assert time.monotonic() < deadline, "the job outlived its tracking server by 5 min"
            time.sleep(2)
    assert job.status == "FAILED", job
    assert job.outcome is None, job
    assert job.error and uri.removeprefix("http://") in job.error, job.error
    port = int(uri.rpartition(":")[2])
    with running_mlflow_server(backend, tmp_path, port):  # back: as the job found it
        registry = MlflowClient(uri, uri)
        assert aliases(registry) == {"champion": "1", "challenger": "2"}
