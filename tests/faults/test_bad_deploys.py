"""Deploys that must be refused while the last good config keeps answering every request,
at one replica (what users run at night and in development) as at two.

Each case deploys ``serve_config.yaml`` with one bad variant while a client sends a
prediction every 50 ms. Every replica refuses the config in ``reconfigure()`` and keeps the
one it serves (Serve itself reports RUNNING: nothing failed); ``GET /models`` says REFUSED,
why, and which config is served; the ``raysplit_config_refused`` gauge is 1; a good deploy
afterwards is applied. Measured on the first version at one replica: 696 of 745 requests
answered 503 after a missing alias.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from raysplit.core.settings import Locations
from serve_app.predict.prepare import config_hash
from tests.conftest import Cluster, running_mlflow_server
from tests.faults.load import BackgroundLoad
from tests.faults.registry import corrupt, register
from tests.integration.serving import RECORD, Deployer, user_config, variants
from tests.integration.test_observability import scrape

pytestmark = pytest.mark.integration


def challenger(uri: str) -> list[dict]:
    return [*variants(50, 50)[:1], {"name": "challenger", "model_uri": uri, "weight": 50}]


def refused_gauge(cluster: Cluster) -> float | None:
    """The highest ``raysplit_config_refused`` any iris replica exports now."""
    values = [
        value
        for name, labels, value in scrape(cluster)
        if name == "ray_raysplit_config_refused" and labels.get("application") == "iris"
    ]
    return max(values) if values else None


def wait_for_gauge(cluster: Cluster, value: float, timeout_s: float = 90) -> None:
    """Until Ray's metrics agent exports ``value`` (it reports every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while (found := refused_gauge(cluster)) != value:
        assert time.monotonic() < deadline, f"raysplit_config_refused is {found}, not {value}"
        time.sleep(1)


def refused_under_load(
    deployer: Deployer,
    good: dict,
    bad: dict,
    expected: str,
    replicas: int,
    actor_options: dict | None = None,
) -> dict:
    """Deploy ``bad`` over ``good`` while a client sends a prediction every 50 ms; assert
    the refusal on every replica and no failed request; the refusing replica's /models."""
    options = {"deployment_options": {"num_replicas": replicas}, "actor_options": actor_options}
    deployer.ensure(good, **options)
    before = requests.get(f"{deployer.url}/models", timeout=10).json()
    assert before["deploy"]["status"] == "APPLIED", before["deploy"]
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    with BackgroundLoad(deployer.url, prefix, connections=1, pause_s=0.05) as load:
        load.wait_for(20)
        # Serve reports RUNNING: every replica took the call and kept its config
        deployer.deploy(bad, **options)
        refused = deployer.every_replica(replicas, lambda m: m["deploy"]["status"] == "REFUSED")
        load.wait_for(load.answered() + 50)  # still answering after the refusal
    samples = load.samples
    print(f"refused ({expected}, {replicas} replica(s)): {len(samples)} requests, all answered")
    assert samples and {s.status for s in samples} == {200}, load.failures()[:5]
    for models in refused.values():
        deploy = models["deploy"]
        assert expected in deploy["reason"], deploy
        assert deploy["refused_config_hash"] == config_hash(bad)
        assert deploy["serving_config_hash"] == before["deploy"]["serving_config_hash"]
        assert deploy["since"] is not None
        assert models["variants"] == before["variants"]  # same versions, same weights
    return next(iter(refused.values()))


def applied_again(deployer: Deployer, good: dict, replicas: int) -> None:
    """A good deploy after a refusal is applied, and every replica says so."""
    deployer.deploy(good, deployment_options={"num_replicas": replicas})
    deployer.every_replica(
        replicas,
        lambda m: (
            m["deploy"]["status"] == "APPLIED"
            and m["deploy"]["serving_config_hash"] == config_hash(good)
        ),
    )


@pytest.fixture(scope="module")
def broken_models(cluster: Cluster, deployer: Deployer) -> dict[str, str]:
    """A corrupt iris model, a wine model (13 features) and a pickled iris model."""
    _, location = register(cluster.locations, "iris-corrupt")
    corrupt(location)
    register(cluster.locations, "wine-model", dataset="wine")
    register(cluster.locations, "iris-pickled", serialization="cloudpickle")
    return {
        "corrupt": "models:/iris-corrupt/1",
        "signature": "models:/wine-model/1",
        "pickle": "models:/iris-pickled/1",
    }


CASES = {
    "unknown model": ("models:/no-such-model/1", "models:/no-such-model/1"),
    "missing alias": ("models:/iris@missing", "models:/iris@missing"),
    "corrupt artifact": ("corrupt", "variant 'challenger' (models:/iris-corrupt/1)"),
    "other signature": ("signature", "variant 'challenger' expects features"),
    "pickled model": ("pickle", "loading a pickle runs arbitrary code"),
}
GOOD = user_config(variants=variants(50, 50))


# one replica first, then two: the cases at one replica run on the replica the previous
# case left (a refusal changes nothing), and moving to two starts one replica, once
@pytest.mark.parametrize(
    ("replicas", "case"), [(n, case) for n in (1, 2) for case in CASES], ids=lambda v: str(v)
)
def test_a_bad_variant_is_refused_and_the_last_good_config_keeps_serving(
    deployer: Deployer, cluster: Cluster, broken_models: dict[str, str], case: str, replicas: int
) -> None:
    uri, expected = CASES[case]
    bad = user_config(variants=challenger(broken_models.get(uri, uri)))
    refused_under_load(deployer, GOOD, bad, expected, replicas)
    # the gauge is set on the one path every kind of refusal takes (Ingress._refuse):
    # followed through Ray's metrics export for one kind at each replica count, as
    # that export takes seconds to show a change
    gauge = case == "missing alias"
    if gauge:
        wait_for_gauge(cluster, 1.0)
    applied_again(deployer, GOOD, replicas)
    if gauge:
        wait_for_gauge(cluster, 0.0)


def test_a_bad_rollout_block_and_a_control_of_another_model_are_refused(
    deployer: Deployer, cluster: Cluster, broken_models: dict[str, str]
) -> None:
    """Refusals that are not a model failing to load: a rollout block pydantic refuses,
    and a control whose features differ from the challenger's (named by the field)."""
    bad_rollout = {**GOOD, "rollout": {"candidate": "no-such-variant", "steps": [5, 50]}}
    models = refused_under_load(deployer, GOOD, bad_rollout, "user_config.rollout", 1)
    assert "no-such-variant" in models["deploy"]["reason"]
    other_control = user_config(
        variants=[
            {"name": "champion", "model_uri": broken_models["signature"], "weight": 50},
            variants()[1],
        ]
    )
    refused_under_load(deployer, GOOD, other_control, "expects features", 1)
    status = raysplit_status(deployer, cluster)
    assert status.startswith(
        f"iris: REFUSED config {config_hash(other_control)}, serving its previous config"
        f" {config_hash(GOOD)} since "
    ), status
    assert "expects features" in status and status.endswith("(Serve RUNNING)"), status
    applied_again(deployer, GOOD, 1)
    assert raysplit_status(deployer, cluster) == (
        f"iris: APPLIED config {config_hash(GOOD)} (Serve RUNNING)"
    )


def test_check_measures_the_replica_maxima_against_the_live_cluster(
    cluster: Cluster, deployer: Deployer, tmp_path: Path
) -> None:
    """`raysplit check` asks the cluster's dashboard how many CPUs its nodes have: the
    shipped config fits the session cluster's 2; with iris at 4 x 0.5 CPU it is warned
    about (the deploy that once stayed DEPLOYING for 10 minutes), and still exit 0."""
    import yaml

    from tests.conftest import REPO

    def check(path: Path) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).parent / "raysplit"), "check", str(path)]
        return subprocess.run(
            [*command, "--address", cluster.info.dashboard_url],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **cluster.env},
            cwd=REPO,
        )

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"] = config["applications"][:1]  # the session registry has iris only
    fits = tmp_path / "fits.yaml"
    fits.write_text(yaml.safe_dump(config))
    shipped = check(fits)
    assert shipped.returncode == 0, shipped.stderr
    assert "warning" not in shipped.stderr, shipped.stderr
    config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 5
    too_big = tmp_path / "too-big.yaml"
    too_big.write_text(yaml.safe_dump(config))
    warned = check(too_big)
    assert warned.returncode == 0, warned.stderr
    assert "up to 2.5 CPUs at their maximum replica counts; the cluster has 2" in warned.stderr


def raysplit_status(deployer: Deployer, cluster: Cluster) -> str:
    """`raysplit status` as a user runs it: one line for the one application."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "raysplit"),
            "status",
            "--address",
            cluster.info.dashboard_url,
            "--url",
            deployer.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **cluster.env},
    )
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return line


def test_a_replica_started_while_a_refusal_stands_serves_the_last_accepted_config(
    deployer: Deployer, broken_models: dict[str, str]
) -> None:
    """Scaling from one replica to two with a refused config deployed: the new replica
    starts on the refused config, serves the last config a replica accepted (from the
    event store) and says so; not one request fails while it starts."""
    bad = user_config(variants=challenger("models:/iris@missing"))
    before = refused_under_load(deployer, GOOD, bad, "models:/iris@missing", 1)
    first = before["replica"]
    with BackgroundLoad(deployer.url, f"scale-{uuid.uuid4().hex[:6]}", 1, pause_s=0.05) as load:
        deployer.deploy(bad, deployment_options={"num_replicas": 2})
        refused = deployer.every_replica(2, lambda m: m["deploy"]["status"] == "REFUSED")
        load.wait_for(load.answered() + 50)
    assert {s.status for s in load.samples} == {200}, load.failures()[:5]
    (started,) = set(refused) - {first}
    deploy = refused[started]["deploy"]
    assert deploy["from_store"] is True, deploy
    assert deploy["serving_config_hash"] == config_hash(GOOD)
    assert deploy["refused_config_hash"] == config_hash(bad)
    assert refused[started]["variants"] == refused[first]["variants"]
    applied_again(deployer, GOOD, 2)


@pytest.fixture
def private_mlflow(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """An `mlflow server` of this test's own, so it can be stopped without hurting others."""
    with running_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as server:
        yield server


def test_an_unreachable_tracking_server_refuses_the_deploy_and_serving_continues(
    deployer: Deployer, private_mlflow: tuple[str, subprocess.Popen], tmp_path: Path
) -> None:
    url, server = private_mlflow
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", url)
        patch.setenv("MLFLOW_REGISTRY_URI", url)
        patch.setenv("RAYSPLIT_HOME", str(tmp_path / "home"))
        locations = Locations.resolve()
    for _ in range(2):
        register(locations, "iris-remote")
    MlflowClient(url, url).set_registered_model_alias("iris-remote", "champion", "1")
    env = {
        "runtime_env": {
            "env_vars": {
                "MLFLOW_TRACKING_URI": url,
                "MLFLOW_REGISTRY_URI": url,
                # fail within seconds rather than after MLflow's default retries (minutes)
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
            }
        }
    }
    good = [
        {"name": "champion", "model_uri": "models:/iris-remote@champion", "weight": 50},
        {"name": "challenger", "model_uri": "models:/iris-remote/2", "weight": 50},
    ]
    deployer.deploy(user_config(variants=good), actor_options=env)
    server.terminate()
    server.wait(timeout=30)
    bad = [good[0], {**good[1], "model_uri": "models:/iris-remote/1"}]
    refused_under_load(
        deployer,
        user_config(variants=good),
        user_config(variants=bad),
        "Connection refused",
        2,
        actor_options=env,
    )


def test_the_first_deploy_of_an_application_has_nothing_to_fall_back_to(
    deployer: Deployer,
) -> None:
    """A new application whose very first config is refused: no replica of it ever
    accepted one, so it fails to start (Serve: DEPLOY_FAILED, naming the problem), and
    the application beside it keeps running."""
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    config = deployer.last_running()  # iris exactly as it runs: not redeployed
    app = copy.deepcopy(config["applications"][0])
    app.update(name=fresh, route_prefix=f"/{fresh}")
    ingress = app["deployments"][0]
    ingress["num_replicas"] = 1
    ingress["user_config"] = user_config(variants=challenger("models:/iris@missing"))
    config["applications"].append(app)
    deployer.apply(config, expect=None)
    started = time.monotonic()
    # progress: Serve tries the replica (twice here) before it calls the deploy failed
    while (status := deployer.applications().get(fresh, {})).get("status") != "DEPLOY_FAILED":
        assert status.get("status") in (None, "NOT_STARTED", "DEPLOYING"), status
        assert time.monotonic() - started < 600, status
        time.sleep(1)
    message = " ".join(
        [
            status.get("message", ""),
            *(d.get("message", "") for d in status.get("deployments", {}).values()),
        ]
    )
    assert "models:/iris@missing" in message, message
    assert deployer.applications()["iris"]["status"] == "RUNNING"
    assert deployer.predict(RECORD).status == 200
    deployer.deploy(GOOD)  # the iris application alone: the failed one is removed


SCALING = {
    "num_replicas": None,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,  # x 0.25 CPU: fits the 2-CPU session cluster beside the other half
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 5,
    },
}


def test_a_refusal_after_load_scaled_the_deployment_up_settles(deployer: Deployer) -> None:
    """Load scales the deployment up; a refused deploy and then a good one once the load
    has stopped: the application is RUNNING again and back at its minimum. (Before, the
    refused deploy's rolling update restarted replicas; with the shipped maxima over the
    machine's CPUs one replica could never be scheduled and the application stayed
    DEPLOYING for over 10 minutes.)"""
    deployer.deploy(GOOD, deployment_options=SCALING)
    with BackgroundLoad(deployer.url, f"scale-{uuid.uuid4().hex[:6]}", connections=6):
        # progress, not a deadline: Serve adds replicas one decision at a time
        started = time.monotonic()
        while len(deployer.replica_ids()) < 2:
            assert time.monotonic() - started < 300, deployer.replica_ids()
            time.sleep(1)
    bad = user_config(variants=challenger("models:/iris@missing"))
    deployer.deploy(bad, deployment_options=SCALING)  # refused in place: RUNNING
    deployer.every_replica(1, lambda m: m["deploy"]["status"] == "REFUSED")
    deployer.deploy(GOOD, deployment_options=SCALING)
    deployer.running_replicas(count=1, timeout=300)  # idle: down to min_replicas
    deployer.every_replica(1, lambda m: m["deploy"]["status"] == "APPLIED")
