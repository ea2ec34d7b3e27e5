"""API keys on a real deployment: one key from the environment, one from a mounted secret
file, each route answered 401/403/200 as its scope says, and no key in any log."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from serve_app.http.auth import Scope, entry_for, new_key
from tests.conftest import REPO, Cluster
from tests.integration.serving import RECORD, Deployer, user_config

pytestmark = pytest.mark.integration

PREDICT, ADMIN = new_key(), new_key()


@pytest.fixture(scope="module")
def secured(deployer: Deployer, tmp_path_factory: pytest.TempPathFactory) -> Deployer:
    """The predict key's hash in RAYSPLIT_API_KEYS, the admin key's in a secret file."""
    secret = tmp_path_factory.mktemp("secrets") / "api-keys"
    secret.write_text(f"# mounted secret\n{entry_for(ADMIN, Scope.ADMIN)}\n")
    env = {
        "RAYSPLIT_API_KEYS": entry_for(PREDICT, Scope.PREDICT),
        "RAYSPLIT_API_KEYS_FILE": str(secret),
    }
    # left running: every test that needs the keys off deploys or ensure()s its config
    deployer.deploy(user_config(), actor_options={"runtime_env": {"env_vars": env}})
    return deployer


def call(deployer: Deployer, method: str, path: str, key: str | None, bearer: bool = True):
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    body = None
    if path == "/predict":
        body = RECORD
    elif path == "/feedback":
        body = {"request_id": "nope", "label": 0}
    return requests.request(method, f"{deployer.url}{path}", json=body, headers=headers, timeout=30)


ADMIN_ROUTES = [
    ("POST", "/feedback"),
    ("GET", "/experiment"),
    ("GET", "/predictions/history"),
    ("GET", "/models"),
    ("GET", "/metrics/summary"),
    ("GET", "/experiments"),
    ("GET", "/experiment/timeline"),
    ("GET", "/ui"),  # the results page and its assets: a browser sends the key as Basic
    ("GET", "/ui/app.js"),
    ("GET", "/ui/links"),
]
OPEN_ROUTES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json")]


def test_without_a_valid_key_every_guarded_route_is_401(secured: Deployer) -> None:
    for method, path in [("POST", "/predict"), *ADMIN_ROUTES]:
        for key in (None, "rsk_not-a-key", PREDICT[:-1]):
            response = call(secured, method, path, key)
            assert response.status_code == 401, (path, key, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "API key" in response.json()["detail"]


def test_a_predict_key_predicts_and_is_refused_admin_routes_with_403(secured: Deployer) -> None:
    for bearer in (True, False):
        assert call(secured, "POST", "/predict", PREDICT, bearer).status_code == 200
    for method, path in ADMIN_ROUTES:
        response = call(secured, method, path, PREDICT)
        assert response.status_code == 403, (path, response.text)
        assert "admin" in response.json()["detail"]


def test_the_admin_key_from_the_secret_file_opens_everything(secured: Deployer) -> None:
    assert call(secured, "POST", "/predict", ADMIN).status_code == 200
    for method, path in ADMIN_ROUTES:
        assert call(secured, method, path, ADMIN).status_code == 200, path


def test_health_and_schema_stay_open(secured: Deployer) -> None:
    for method, path in OPEN_ROUTES:
        assert call(secured, method, path, None).status_code == 200, path


def test_no_key_reaches_any_log(secured: Deployer, cluster: Cluster) -> None:
    marker = f"audit-{uuid.uuid4().hex}"
    for key in (PREDICT, ADMIN, "rsk_wrong"):
        requests.post(
            f"{secured.url}/predict",
            json=RECORD,
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": marker},
            timeout=30,
        )
    logs = Path(cluster.info.temp_dir) / "session_latest" / "logs"
    texts = [p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file()]
    assert any(marker in t for t in texts), "the requests were not logged at all"
    for secret in (PREDICT, ADMIN, "rsk_wrong"):
        assert not any(secret in t for t in texts), "an API key was written to a log"


def test_oip_routes_need_a_predict_key_and_answer_in_the_protocols_error_field(
    secured: Deployer,
) -> None:
    body = {"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP64", "data": [5.1]}]}
    refused = requests.post(f"{secured.url}/v2/models/iris/infer", json=body, timeout=30)
    assert refused.status_code == 401
    assert "API key" in refused.json()["error"]
    metadata = requests.get(
        f"{secured.url}/v2/models/iris", headers={"X-API-Key": PREDICT}, timeout=30
    )
    assert metadata.status_code == 200 and metadata.json()["name"] == "iris"


def raysplit(*args: str, api_key_env: str | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it; RAYSPLIT_API_KEY only if given."""
    env = {k: v for k, v in os.environ.items() if k != "RAYSPLIT_API_KEY"}
    if api_key_env is not None:
        env["RAYSPLIT_API_KEY"] = api_key_env
    return subprocess.run(
        [str(Path(sys.executable).parent / "raysplit"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )


def test_report_and_traffic_send_the_key_from_the_flag_or_the_environment(
    secured: Deployer,
) -> None:
    url = secured.url
    traffic = ("traffic", "--url", url, "--requests", "8", "--users", "2", "--feedback")
    report = ("report", "--url", url)

    for args, path in ((traffic, "/predict"), (report, "/experiment")):
        refused = raysplit(*args)
        assert refused.returncode == 2, refused.stdout
        assert refused.stderr.splitlines() == [
            f"raysplit: error: {url}{path} answered 401 Unauthorized: missing or invalid API"
            " key: send Authorization: Bearer <key> or X-API-Key: <key>; pass --api-key or"
            " set RAYSPLIT_API_KEY"
        ]
    # feedback needs the admin scope: a predict key gets its predictions, then a 403
    partial = raysplit(*traffic, "--api-key", PREDICT)
    assert partial.returncode == 2
    assert partial.stderr.splitlines() == [
        f"raysplit: error: {url}/feedback answered 403 Forbidden: this API key has scope"
        " 'predict'; POST /feedback needs 'admin'"
    ]

    # the flag wins over a wrong key in the environment
    for key_args, key_env in (("--api-key", ADMIN), "rsk_wrong"), ((), ADMIN):
        sent = raysplit(*traffic, *key_args, api_key_env=key_env)
        assert sent.returncode == 0, sent.stderr
        assert f"sent 8 predictions to {url}/predict: 8 ok, 0 failed" in sent.stdout
        assert "feedback: 8 labels sent" in sent.stdout
        shown = raysplit(*report, *key_args, api_key_env=key_env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("experiment iris-ab (classification): ")
