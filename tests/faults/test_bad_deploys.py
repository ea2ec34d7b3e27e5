"""Deploys that must be refused while the running variants keep answering every request.

Each case redeploys ``serve_config.yaml`` with one bad variant while clients send
predictions: Serve must report ``DEPLOY_FAILED`` with a message naming the problem, the
replicas keep the experiment they had, and not one request fails during the attempt.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from raysplit.core.settings import Locations
from tests.conftest import Cluster, running_mlflow_server
from tests.faults.load import BackgroundLoad
from tests.faults.registry import corrupt, register
from tests.integration.serving import Deployer, user_config, variants

pytestmark = pytest.mark.integration


def challenger(uri: str) -> list[dict]:
    return [*variants(50, 50)[:1], {"name": "challenger", "model_uri": uri, "weight": 50}]


def refused_under_load(
    deployer: Deployer, bad: dict, expected: str, actor_options: dict | None = None
) -> None:
    """Deploy ``bad`` while 2 clients send predictions; assert the refusal and no failure."""
    before = requests.get(f"{deployer.url}/models", timeout=10).json()
    prefix = f"bad-{uuid.uuid4().hex[:6]}"
    # 2 clients at up to 10 requests/s each, all through the attempt (about 190 requests
    # per case): the load that shows the refusal costs nothing, not a saturating one that
    # slows the failing replicas' starts and the suite's other worker
    with BackgroundLoad(deployer.url, prefix, connections=2, pause_s=0.1) as load:
        load.wait_for(50)
        status = deployer.deploy(bad, expect="DEPLOY_FAILED", actor_options=actor_options)
        load.wait_for(load.answered() + 50)  # still answering after the refusal
    message = " ".join(
        [status.get("message", ""), *(d.get("message", "") for d in status["deployments"].values())]
    )
    assert expected in message, message
    samples = load.samples
    print(f"refused ({expected}): {len(samples)} requests during the attempt, all answered")
    assert samples and {s.status for s in samples} == {200}, load.failures()[:5]
    models = requests.get(f"{deployer.url}/models", timeout=10).json()
    assert models["deploy"]["status"] == "DEPLOY_FAILED"
    assert expected in models["deploy"]["message"]
    resolved = {v["name"]: v["resolved_uri"] for v in models["variants"]}
    assert resolved == {v["name"]: v["resolved_uri"] for v in before["variants"]}


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


@pytest.mark.parametrize("case", CASES)
def test_a_bad_variant_is_refused_and_the_running_ones_keep_serving(
    deployer: Deployer, broken_models: dict[str, str], case: str
) -> None:
    uri, expected = CASES[case]
    # The first case starts from two replicas of the good config: Serve stops one of them
    # for the rolling update while the refused replacement fails. It keeps the other one
    # serving, and each later case is refused over that one (below its target of two,
    # Serve stops no old replica before a new one runs); no good deploy in between, which
    # would only start a second replica for the next refusal to stop again.
    deployer.ensure(user_config(variants=variants(50, 50)), after_refusal=True)
    refused_under_load(
        deployer, user_config(variants=challenger(broken_models.get(uri, uri))), expected
    )


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
    refused_under_load(deployer, user_config(variants=bad), "Connection refused", actor_options=env)
