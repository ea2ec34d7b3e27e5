"""Two applications on one cluster, as the shipped serve_config.yaml deploys them: iris
(classification) at ``/`` and diabetes (regression) at ``/diabetes``, behind one ingress
port, each with its own experiment, event rows, metrics and report.

Deployed through the dashboard's ``PUT /api/serve/applications/`` (the request
`serve deploy` sends) with both applications in one config. Other modules deploy the iris
application alone, which removes diabetes; this module makes the next ``ensure()``
redeploy (see :func:`two_apps`).
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests
import sqlalchemy as sa

from raysplit.cli.traffic import wait_ready
from tests.conftest import Cluster, cluster_registry
from tests.integration.serving import RECORD, Deployer, user_config, variants
from tests.integration.test_cli import RAYSPLIT
from tests.integration.test_observability import scrape, total

pytestmark = pytest.mark.integration

DIABETES = "diabetes"
DIABETES_EXPERIMENT = "diabetes-ab"  # serve_config.yaml's
PREFIX = "/diabetes"
IRIS_REQUESTS = 40
DIABETES_REQUESTS = 60


@dataclass
class DiabetesModels:
    """The two registered diabetes versions and the fitted estimators behind them."""

    versions: dict[str, str]  # variant (alias) -> registered version
    estimators: dict[str, Any]


@dataclass
class Sent:
    """What this module sent to one application: request id -> the variant that answered."""

    variants: dict[str, str] = field(default_factory=dict)
    feedback: int = 0


@dataclass
class TwoApps:
    iris_url: str
    diabetes_url: str
    iris_experiment: str
    models: DiabetesModels
    iris: Sent
    diabetes: Sent


@pytest.fixture(scope="module")
def diabetes_models(deployer: Deployer, cluster: Cluster) -> DiabetesModels:
    """Two diabetes regressors of different families, logged the way `raysplit tune` logs
    its best model (no search: seconds), `champion` and `challenger` as in the config."""
    from sklearn.linear_model import Ridge
    from sklearn.tree import DecisionTreeRegressor

    from tests.models import diabetes, log_model
    from tune.tracking import ensure_experiment

    estimators = {
        "champion": Ridge(alpha=0.1),
        "challenger": DecisionTreeRegressor(max_depth=4, random_state=0),
    }
    versions = {}
    with cluster_registry(cluster) as (client, _):
        experiment = ensure_experiment(client, "raysplit-diabetes", cluster.locations)
        x, y = diabetes()
        for alias, model in estimators.items():
            info = log_model(model, x, y, name=DIABETES, alias=alias, experiment_id=experiment)
            versions[alias] = str(info.registered_model_version)
    return DiabetesModels(versions, estimators)


def two_app_config(deployer: Deployer, iris_user_config: dict[str, Any]) -> dict[str, Any]:
    """The iris application as the other tests deploy it (test port, two replicas), plus
    serve_config.yaml's diabetes application exactly as shipped but for a fast report."""
    config = deployer.config(iris_user_config)
    (shipped,) = [a for a in deployer.base["applications"] if a["name"] == DIABETES]
    app = copy.deepcopy(shipped)
    assert app["route_prefix"] == PREFIX
    assert app["deployments"][0]["user_config"]["experiment"] == DIABETES_EXPERIMENT
    app["deployments"][0]["user_config"]["report_interval_s"] = 1
    config["applications"].append(app)
    return config


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(url, json=body, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def two_apps(deployer: Deployer, cluster: Cluster, diabetes_models: DiabetesModels) -> TwoApps:
    """Both applications deployed in one config, then labelled traffic to each: iris with
    ``label`` feedback, diabetes with ``value`` feedback, half the requests sticky."""
    from tests.models import diabetes

    iris_experiment = f"iris-two-apps-{uuid.uuid4().hex[:6]}"
    config = two_app_config(
        deployer, user_config(experiment=iris_experiment, variants=variants(50, 50))
    )
    deployer.apply(config)  # the next test's ensure() deploys iris alone again
    iris_url, diabetes_url = deployer.url, f"{deployer.url}{PREFIX}"
    wait_ready(iris_url, 120)
    wait_ready(diabetes_url, 120)

    iris, regression = Sent(), Sent()
    for i in range(IRIS_REQUESTS):
        rid = f"{iris_experiment}-{i}"
        headers = {"X-Request-Id": rid, **({"X-User-Id": f"u{i % 7}"} if i % 2 else {})}
        reply = _post(f"{iris_url}/predict", RECORD, headers)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"]["name"] == "iris"
        iris.variants[rid] = reply.json()["variant"]

    x, y = diabetes()
    records = x.to_dict(orient="records")
    truth = {}
    for i in range(DIABETES_REQUESTS):
        rid = f"two-apps-diabetes-{uuid.uuid4().hex[:8]}-{i}"
        row = (7 * i) % len(records)
        headers = {"X-Request-Id": rid, **({"X-User-Id": f"u{i % 7}"} if i % 2 else {})}
        reply = _post(f"{diabetes_url}/predict", records[row], headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        variant = body["variant"]
        # its own model: the version registered for this variant, and that model's answer
        assert body["model"] == {"name": DIABETES, "version": diabetes_models.versions[variant]}
        assert "probabilities" not in body and "classes" not in body
        expected = diabetes_models.estimators[variant].predict(x.iloc[[row]])
        np.testing.assert_allclose(body["predictions"], expected, rtol=1e-9)
        regression.variants[rid] = variant
        truth[rid] = float(y.iloc[row])

    # the Open Inference Protocol under the prefix, routed by the split (the experiment's
    # name), with a request id of ours so it is counted like the rest
    rid = f"two-apps-diabetes-oip-{uuid.uuid4().hex[:8]}"
    tensor = {"name": "input-0", "shape": [1, 10], "datatype": "FP64"}
    oip = _post(
        f"{diabetes_url}/v2/models/{DIABETES_EXPERIMENT}/infer",
        {"id": rid, "inputs": [{**tensor, "data": x.iloc[0].tolist()}]},
    )
    assert oip.status_code == 200, oip.text
    regression.variants[rid] = oip.json()["parameters"]["variant"]
    truth[rid] = float(y.iloc[0])

    # feedback: a label for the classifier, a value for the regressor
    wait_history(iris_url, set(iris.variants))
    wait_history(diabetes_url, set(regression.variants))
    labels = [{"request_id": rid, "label": "setosa"} for rid in iris.variants]
    assert _post(f"{iris_url}/feedback", labels).json() == {
        "accepted": IRIS_REQUESTS,
        "unknown_request_ids": [],
        "refused": [],
    }
    iris.feedback = IRIS_REQUESTS
    values = [{"request_id": rid, "value": value} for rid, value in truth.items()]
    assert _post(f"{diabetes_url}/feedback", values).json() == {
        "accepted": DIABETES_REQUESTS + 1,
        "unknown_request_ids": [],
        "refused": [],
    }
    regression.feedback = DIABETES_REQUESTS + 1
    return TwoApps(iris_url, diabetes_url, iris_experiment, diabetes_models, iris, regression)


def wait_history(url: str, request_ids: set[str], timeout: float = 30.0) -> list[dict]:
    """The application's own history once it holds every one of ``request_ids``."""
    deadline = time.monotonic() + timeout
    while True:
        rows = requests.get(
            f"{url}/predictions/history", params={"limit": 2000}, timeout=10
        ).json()["predictions"]
        if request_ids <= {r["request_id"] for r in rows}:
            return rows
        assert time.monotonic() < deadline, f"{url}: not all predictions were written"
        time.sleep(0.2)


def report_when(url: str, requests_: int, feedback: int, timeout: float = 60.0) -> dict:
    """GET /experiment once it counts ``requests_`` live requests and ``feedback`` labels."""
    deadline = time.monotonic() + timeout
    while True:
        report = requests.get(f"{url}/experiment", timeout=30).json()
        live = [v for v in report["variants"] if not v["shadow"]]
        counted = (report["requests"], sum(v["feedback"] for v in live))
        if counted == (requests_, feedback) or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def test_each_application_names_its_own_variants(two_apps: TwoApps) -> None:
    iris = requests.get(f"{two_apps.iris_url}/models", timeout=10).json()
    diabetes = requests.get(f"{two_apps.diabetes_url}/models", timeout=10).json()
    assert iris["experiment"] == two_apps.iris_experiment
    assert diabetes["experiment"] == DIABETES_EXPERIMENT
    assert {v["name"]: v["model"]["name"] for v in iris["variants"]} == {
        "champion": "iris",
        "challenger": "iris",
    }
    assert {v["name"]: v["model"] for v in diabetes["variants"]} == {
        name: {"name": DIABETES, "version": version}
        for name, version in two_apps.models.versions.items()
    }
    assert diabetes["features"] == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert diabetes["serve"]["status"] == "RUNNING"
    # what the prefix serves besides /predict: readiness, the API docs, OIP
    ready = requests.get(f"{two_apps.diabetes_url}/readyz", timeout=10).json()
    assert ready == {"status": "ready", "experiment": DIABETES_EXPERIMENT}
    docs = requests.get(f"{two_apps.diabetes_url}/docs", timeout=10)
    assert docs.status_code == 200 and f"{PREFIX}/openapi.json" in docs.text
    spec = requests.get(f"{two_apps.diabetes_url}/openapi.json", timeout=10).json()
    assert "/predict" in spec["paths"] and "/feedback" in spec["paths"]
    assert requests.get(f"{two_apps.diabetes_url}/v2/health/ready", timeout=10).ok
    meta = requests.get(f"{two_apps.diabetes_url}/v2/models/{DIABETES}", timeout=10).json()
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]
    assert len(meta["inputs"]) == 10


def test_errors_under_the_prefix_keep_each_protocols_shape(two_apps: TwoApps) -> None:
    """OIP routes answer {"error": ...} and the rest {"detail": ...} under /diabetes too; a
    record of the other application's features is refused naming them."""
    unknown = _post(f"{two_apps.diabetes_url}/v2/models/iris/infer", {"inputs": []})
    assert unknown.status_code == 404
    assert "unknown model 'iris'" in unknown.json()["error"]
    wrong = _post(f"{two_apps.diabetes_url}/predict", RECORD)
    assert wrong.status_code == 422 and "missing feature(s): age" in wrong.json()["detail"]
    regression_feedback = _post(f"{two_apps.diabetes_url}/feedback", {"request_id": "x"})
    assert regression_feedback.status_code == 422


def test_each_report_counts_only_its_own_traffic(two_apps: TwoApps) -> None:
    for url, experiment, sent, task in (
        (two_apps.iris_url, two_apps.iris_experiment, two_apps.iris, "classification"),
        (two_apps.diabetes_url, DIABETES_EXPERIMENT, two_apps.diabetes, "regression"),
    ):
        report = report_when(url, len(sent.variants), sent.feedback)
        assert (report["experiment"], report["task"]) == (experiment, task)
        assert report["requests"] == len(sent.variants)
        live = {v["name"]: v for v in report["variants"] if not v["shadow"]}
        assert {n: v["assigned"] for n, v in live.items()} == dict(Counter(sent.variants.values()))
        assert sum(v["feedback"] for v in live.values()) == sent.feedback
        if task == "regression":
            assert all(v["mae"] is not None and v["accuracy"] is None for v in live.values())
        else:
            assert all(v["accuracy"] is not None and v["mae"] is None for v in live.values())


def test_event_rows_of_each_experiment_hold_only_its_own_requests(
    two_apps: TwoApps, cluster: Cluster
) -> None:
    engine = sa.create_engine(cluster.locations.event_store_url)
    query = sa.text("SELECT request_id, model_name FROM raysplit_predictions WHERE experiment = :e")
    try:
        with engine.connect() as conn:
            diabetes = conn.execute(query, {"e": DIABETES_EXPERIMENT}).all()
            iris = conn.execute(query, {"e": two_apps.iris_experiment}).all()
            labelled = conn.execute(
                sa.text("SELECT request_id, label_text, value FROM raysplit_feedback")
            ).all()
    finally:
        engine.dispose()
    assert {rid for rid, _ in diabetes} == set(two_apps.diabetes.variants)
    assert {model for _, model in diabetes} == {DIABETES}
    assert {rid for rid, _ in iris} == set(two_apps.iris.variants)
    assert {model for _, model in iris} == {"iris"}
    # feedback rows: a value for each diabetes request, a label for each iris one
    feedback = {rid: (label, value is not None) for rid, label, value in labelled}
    assert {feedback[rid] for rid in two_apps.diabetes.variants} == {(None, True)}
    assert {feedback[rid] for rid in two_apps.iris.variants} == {("setosa", False)}
    # each application's history is its own experiment's
    for url, sent in (
        (two_apps.iris_url, two_apps.iris),
        (two_apps.diabetes_url, two_apps.diabetes),
    ):
        rows = wait_history(url, set(sent.variants))
        other = two_apps.diabetes if sent is two_apps.iris else two_apps.iris
        assert not {r["request_id"] for r in rows} & set(other.variants)
        assert len({r["experiment"] for r in rows}) == 1


def test_metrics_carry_the_application(two_apps: TwoApps, cluster: Cluster) -> None:
    """Ray tags raysplit's series with the Serve application, so Prometheus and the
    dashboard's $application variable tell the two apart."""
    want = {
        DIABETES_EXPERIMENT: {"diabetes": float(len(two_apps.diabetes.variants))},
        two_apps.iris_experiment: {"iris": float(len(two_apps.iris.variants))},
    }
    want_feedback = {"n/a": float(two_apps.diabetes.feedback)}
    # both series are exported on Ray's metrics interval, not necessarily in the same one
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(cluster)
        seen = {
            experiment: total(
                samples, "ray_raysplit_requests_total", "application", experiment=experiment
            )
            for experiment in want
        }
        feedback = total(
            samples, "ray_raysplit_feedback_total", "correct", experiment=DIABETES_EXPERIMENT
        )
        if (seen, feedback) == (want, want_feedback) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == want
    assert feedback == want_feedback


def test_raysplit_traffic_and_report_address_an_application(
    two_apps: TwoApps, cluster: Cluster
) -> None:
    """`raysplit traffic --app diabetes` finds the route prefix in Serve's route table,
    samples diabetes rows and sends their values as feedback; the diabetes report counts
    exactly those on top, the iris report nothing more."""
    env = {**os.environ, **cluster.env}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(RAYSPLIT), *args], env=env, capture_output=True, text=True, timeout=180
        )

    traffic = ["--app", DIABETES, "--requests", "20", "--users", "4", "--feedback"]
    sent = run("traffic", "--url", two_apps.iris_url, *traffic)
    assert sent.returncode == 0, sent.stderr
    assert f"to {two_apps.diabetes_url}/predict: 20 ok, 0 failed" in sent.stdout
    assert "feedback: 20 labels sent" in sent.stdout
    n = len(two_apps.diabetes.variants)
    report = report_when(two_apps.diabetes_url, n + 20, two_apps.diabetes.feedback + 20)
    assert report["requests"] == n + 20
    iris = report_when(two_apps.iris_url, len(two_apps.iris.variants), two_apps.iris.feedback)
    assert iris["requests"] == len(two_apps.iris.variants)

    printed = run("report", "--url", two_apps.iris_url, "--app", DIABETES)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith(f"experiment {DIABETES_EXPERIMENT} (regression)")
    default = run("report", "--url", two_apps.iris_url)
    assert default.stdout.startswith(f"experiment {two_apps.iris_experiment} (classification)")
    missing = run("report", "--url", two_apps.iris_url, "--app", "nope")
    assert missing.returncode == 2
    assert "no application 'nope'" in missing.stderr and "diabetes at /diabetes" in missing.stderr
