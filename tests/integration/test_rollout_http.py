"""Automatic rollouts on the real cluster, over HTTP, with feedback sent as a client sends it
(``raysplit traffic --feedback``'s own code): a constant-class candidate is rolled back and
its share reaches 0 on every replica; a k-NN candidate over a constant control is promoted
through every step, the control's alias moves in the registry and serving follows without a
deploy, and killing the replica that holds the controller's lease mid-rollout leaves the
rollout to go on from the same step."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.neighbors import KNeighborsClassifier

from raysplit.cli.main import main as raysplit
from raysplit.cli.traffic import send
from raysplit.core.registry import move_alias
from tests.conftest import Cluster, cluster_registry
from tests.integration.serving import Deployer
from tests.integration.test_observability import dashboard_metrics, scrape
from tests.models import iris, log_model

pytestmark = pytest.mark.integration

MODEL = "iris-rollout"


@pytest.fixture(scope="module")
def rollout_models(cluster: Cluster, deployer: Deployer) -> MlflowClient:
    """iris-rollout v1: a constant model ('weak', 'prod'); v2: k-NN ('strong')."""
    with cluster_registry(cluster) as (client, experiment):
        x, y = iris()
        log_model(DummyClassifier(), x, y, name=MODEL, alias="weak", experiment_id=experiment)
        move_alias(client, MODEL, "prod", "1")  # with raysplit's history, as tune sets it
        log_model(
            KNeighborsClassifier(), x, y, name=MODEL, alias="strong", experiment_id=experiment
        )
        return MlflowClient(
            cluster.locations.mlflow_tracking_uri, cluster.locations.mlflow_registry_uri
        )


def rollout_config(experiment: str, control: str, candidate: str, steps: list[float]) -> dict:
    return {
        "experiment": experiment,
        "salt": "rollout",
        "alias_refresh_s": 0,  # serving may follow the promotion only through the rollout
        "report_interval_s": 0,
        "variants": [
            {"name": "champion", "model_uri": control, "weight": 100},
            {"name": "challenger", "model_uri": candidate, "weight": 0},
        ],
        "rollout": {
            "candidate": "challenger",
            "steps": steps,
            "min_scored_per_step": 30,
            "min_step_s": 1,
            "non_inferiority_margin": 0.05,
            # a k-NN is slower than a constant, and a few dozen rows' PSI against the
            # training split's reference is noise that can pass 0.25: neither latency
            # nor drift is what these tests are about
            "guardrails": {"max_p95_latency_ratio": None, "max_psi": None},
            "evaluation_interval_s": 1,
        },
    }


def rollout(deployer: Deployer) -> dict[str, Any]:
    for attempt in range(5):  # a connection the killed replica held may be cut once
        try:
            response = requests.get(f"{deployer.url}/rollout", params={"limit": 500}, timeout=10)
            break
        except requests.ConnectionError:
            if attempt == 4:
                raise
            time.sleep(1)
    response.raise_for_status()
    return response.json()


def every_replica(deployer: Deployer, check: Callable[[dict], bool], timeout: float = 60) -> None:
    """Until ``check(GET /models)`` holds on two different replicas in a row of answers."""
    deadline = time.monotonic() + timeout
    seen: dict[str, bool] = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{deployer.url}/models", timeout=10).json()
        seen[body["replica"]] = check(body)
        running = deployer.replica_ids()
        if running and all(seen.get(r) for r in running):
            return
        time.sleep(0.2)
    raise AssertionError(f"not every replica got there: {seen}")


def challenger_weight(body: dict) -> float:
    return next(v["weight"] for v in body["variants"] if v["name"] == "challenger")


def drive(deployer: Deployer, until: Callable[[dict], bool], timeout: float = 240) -> dict:
    """Send labelled traffic in rounds until ``until(GET /rollout)`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = rollout(deployer)
        if until(view):
            return view
        lines = send(deployer.url, "iris", 150, users=40, feedback=True)
        assert " 0 failed" in lines[0], lines
    raise AssertionError(f"the rollout never got there: {rollout(deployer)['rollout']}")


def test_a_constant_candidate_is_rolled_back_and_every_replica_sends_it_nothing(
    deployer: Deployer,
    rollout_models: MlflowClient,
    cluster: Cluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"rollback-{os.getpid()}"
    deployer.deploy(
        rollout_config(name, f"models:/{MODEL}@strong", f"models:/{MODEL}@weak", [25, 50])
    )
    every_replica(deployer, lambda body: challenger_weight(body) == 25)
    # the operator's commands, through the CLI as a person types them
    assert raysplit(["rollout", "pause", "--url", deployer.url]) == 0
    assert raysplit(["rollout", "pause", "--url", deployer.url]) == 2  # 409: already paused
    assert "the rollout is already paused" in capsys.readouterr().err
    assert raysplit(["rollout", "resume", "--url", deployer.url]) == 0
    view = drive(deployer, lambda v: v["rollout"]["phase"] != "running")
    record = view["rollout"]
    assert record["phase"] == "rolled_back", record
    assert "worse than the control on accuracy" in record["reason"]
    every_replica(deployer, lambda body: challenger_weight(body) == 0)
    replies = deployer.load(60)
    assert {r.variant for r in replies} == {"champion"}
    kinds = [d["kind"] for d in view["decisions"] if d["kind"] != "hold"]
    assert kinds == ["start", "pause", "resume", "rollback"]
    models = requests.get(f"{deployer.url}/models", timeout=10).json()
    assert models["weights_differ"] and "rolled_back" in models["weights_differ"]
    configured = {v["name"]: v["configured_weight"] for v in models["variants"]}
    assert configured == {"champion": 100, "challenger": 0}
    assert rollout_models.get_model_version_by_alias(MODEL, "strong").version == 2  # no move
    deadline = time.monotonic() + 60
    while rollout(deployer)["rollout"]["registry"] != "done":
        assert time.monotonic() < deadline, rollout(deployer)["rollout"]
        time.sleep(0.5)
    assert "rolled_back" in rollout_models.get_model_version(MODEL, "1").tags
    capsys.readouterr()
    assert raysplit(["rollout", "status", "--url", deployer.url]) == 0
    status = capsys.readouterr().out
    assert "rolled_back, step 1 of 2, candidate at 0%" in status
    assert "pause " in status and "resume " in status and "rollback " in status
    seen = rollout_series(cluster, name)
    assert seen["decisions"]["start"] == seen["decisions"]["rollback"] == 1.0, seen
    assert seen["phases"] == {"rolled_back"} and seen["shares"] == {0.0}, seen
    assert dashboard_metrics(rollout=True) <= seen["names"]  # every rollout panel has data


def rollout_series(cluster: Cluster, experiment: str, timeout: float = 90) -> dict[str, Any]:
    """The rollout's Prometheus series as Ray exports them, once every replica's export
    shows the rollback (each replica sets its own gauges when its follower polls, and
    exporters lag by seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = {"decisions": {}, "phases": set(), "shares": set(), "names": set()}
        for sample, labels, value in scrape(cluster):
            if labels.get("experiment") != experiment:
                continue
            found["names"].add(sample)
            if sample == "ray_raysplit_rollout_decisions_total":
                kind = labels["kind"]
                found["decisions"][kind] = found["decisions"].get(kind, 0.0) + value
            elif sample == "ray_raysplit_rollout_phase" and value == 1:
                found["phases"].add(labels["phase"])
            elif sample == "ray_raysplit_rollout_share":
                found["shares"].add(value)
        settled = found["phases"] == {"rolled_back"} and found["shares"] == {0.0}
        if ("rollback" in found["decisions"] and settled) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_a_better_candidate_is_promoted_through_every_step_despite_losing_its_controller(
    deployer: Deployer, rollout_models: MlflowClient
) -> None:
    name = f"promote-{os.getpid()}"
    deployer.deploy(
        rollout_config(name, f"models:/{MODEL}@prod", f"models:/{MODEL}@strong", [20, 35, 50])
    )
    every_replica(deployer, lambda body: challenger_weight(body) == 20)
    view = drive(deployer, lambda v: v["rollout"]["step"] >= 1)
    assert view["rollout"]["phase"] == "running", view["rollout"]
    advanced = [d for d in view["decisions"] if d["kind"] == "advance"]
    holder = advanced[-1]["actor"]
    pids = deployer.replica_pids()
    os.kill(pids[holder], signal.SIGKILL)  # the controller, mid-rollout
    step_at_kill = view["rollout"]["step"]
    deployer.running_replicas(without={holder})  # Serve replaced the killed controller

    view = drive(deployer, lambda v: v["rollout"]["phase"] != "running", timeout=300)
    record = view["rollout"]
    assert record["phase"] == "promoted", record
    moves = [d for d in view["decisions"] if d["kind"] not in ("hold",)]
    assert [d["kind"] for d in moves] == ["start", "advance", "advance", "promote"]
    assert [d["step"] for d in moves[1:]] == [0, 1, 2]  # no step skipped or repeated
    after_kill = [d for d in moves if d["step"] >= step_at_kill and d["kind"] != "start"]
    assert after_kill and all(d["actor"] != holder for d in after_kill)

    deadline = time.monotonic() + 90
    while rollout(deployer)["rollout"]["registry"] != "done":
        assert time.monotonic() < deadline, rollout(deployer)["rollout"]
        time.sleep(0.5)
    assert rollout_models.get_model_version_by_alias(MODEL, "prod").version == 2
    # serving follows the moved alias without a deploy (alias_refresh_s is 0 here)
    every_replica(
        deployer,
        lambda body: (
            {v["name"]: v["model"]["version"] for v in body["variants"]}["champion"] == "2"
        ),
        timeout=90,
    )
    replies = deployer.load(40)
    assert {r.status for r in replies} == {200}
    assert {r.variant for r in replies} == {"champion"}
