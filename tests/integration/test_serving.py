"""The Serve application on a real Ray cluster, deployed through Serve's REST API (and the
user's own `serve deploy` where that path is the subject), models from the real MLflow
registry, every assertion over real HTTP. About 500 lines: one test per behaviour of the
ingress (routing, stickiness, forcing, shadows, feedback, weights, OIP, aliases, errors,
batching, the report), all on the session's deployer."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from scipy.stats import chisquare

from serve_app.config.ingress import IngressConfig
from serve_app.predict.routing import Router
from tests.conftest import Cluster, free_port
from tests.integration.serving import RECORD, Deployer, Reply, user_config, variants

pytestmark = pytest.mark.integration


# First: it deploys replicas with an environment of their own, as test_security.py (run
# just before) does, so the suite replaces replicas once between the two, not twice.
def test_predictions_keep_succeeding_while_the_event_store_is_down(deployer: Deployer) -> None:
    """Replicas pointed at a database nobody listens on: every prediction still answers,
    the events wait in the queue and the failure is visible."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    env = {"runtime_env": {"env_vars": {"RAYSPLIT_EVENT_STORE_URL": dead}}}
    deployer.deploy(user_config(), actor_options=env)
    replies = deployer.load(200, threads=4)
    assert {r.status for r in replies} == {200}
    for _ in range(60):
        events = [
            requests.get(f"{deployer.url}/models", timeout=10).json()["events"] for _ in range(6)
        ]
        if all(e["failed_flushes"] > 0 for e in events):
            break
        time.sleep(0.5)
    assert any(e["queued"] > 0 for e in events)
    assert all("OperationalError" in (e["last_error"] or "") for e in events)
    history = requests.get(f"{deployer.url}/predictions/history", timeout=10)
    assert history.status_code == 503
    assert "event store unavailable" in history.json()["detail"]


def test_deployed_app_reports_its_variants(deployer: Deployer) -> None:
    deployer.ensure(user_config())
    models = requests.get(f"{deployer.url}/models", timeout=10).json()
    assert models["experiment"] == "iris-ab"
    assert models["deploy"]["status"] == "APPLIED", models["deploy"]
    by_name = {v["name"]: v for v in models["variants"]}
    assert by_name["champion"]["model"] == {"name": "iris", "version": "1"}
    assert by_name["challenger"]["resolved_uri"] == "models:/iris/2"
    assert requests.get(f"{deployer.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert "/predict" in requests.get(f"{deployer.url}/openapi.json", timeout=5).json()["paths"]


def test_prediction_response_shape(deployer: Deployer) -> None:
    deployer.ensure(user_config())
    reply = deployer.predict(RECORD, {"X-Request-Id": "req-shape-1"})
    assert reply.status == 200
    assert reply.body["request_id"] == "req-shape-1"
    assert reply.body["variant"] in {"champion", "challenger"}
    assert reply.body["predictions"] == ["setosa"]
    assert reply.body["classes"] == ["setosa", "versicolor", "virginica"]
    assert abs(sum(reply.body["probabilities"][0]) - 1) < 1e-9
    batch = deployer.predict({"instances": [RECORD, [6.7, 3.0, 5.2, 2.3]]})
    assert batch.body["predictions"] == ["setosa", "virginica"]


def test_observed_split_matches_the_weights(deployer: Deployer) -> None:
    deployer.deploy(user_config(variants=variants(70, 30)))
    replies = deployer.load(2000)
    assert {r.status for r in replies} == {200}
    counts = Counter(r.variant for r in replies)
    result = chisquare([counts["champion"], counts["challenger"]], [1400, 600])
    assert result.pvalue > 0.001, counts


def test_same_user_same_variant_on_every_replica(deployer: Deployer) -> None:
    config = user_config(variants=variants(50, 50))
    deployer.ensure(config)
    # HAProxy learns of replicas after Serve reports RUNNING: wait (bounded) until both answer
    for _ in range(60):
        if len({r.replica for r in deployer.load(40)}) == 2:
            break
        time.sleep(0.5)
    users = [f"user-{i}" for i in range(40)]
    replies = deployer.load(400, headers=lambda i: {"X-User-Id": users[i % 40]})
    seen: dict[str, set[str]] = {}
    for i, reply in enumerate(replies):
        seen.setdefault(users[i % 40], set()).add(reply.variant)
    assert all(len(v) == 1 for v in seen.values()), seen
    assert len({r.replica for r in replies}) == 2, "both replicas must have answered"
    router = Router(IngressConfig.model_validate(config))  # and it is the documented hash
    assert all(seen[u] == {router.assign(u, None, 0).variant} for u in users)
    assert {v for s in seen.values() for v in s} == {"champion", "challenger"}


def test_x_variant_forces_a_variant(deployer: Deployer) -> None:
    deployer.deploy(user_config(variants=variants(100, 0)))
    forced = deployer.load(20, headers=lambda i: {"X-Variant": "challenger", "X-User-Id": "bob"})
    assert {r.variant for r in forced} == {"challenger"}
    unknown = deployer.predict(RECORD, {"X-Variant": "nope"})
    assert unknown.status == 400
    assert "X-Variant 'nope' is not a live variant" in unknown.body["detail"]
    deployer.deploy(user_config(variants=variants(100, 0), allow_override=False))
    refused = deployer.predict(RECORD, {"X-Variant": "challenger"})
    assert refused.status == 403 and "overrides are disabled" in refused.body["detail"]


def test_shadow_is_recorded_but_never_answers(deployer: Deployer) -> None:
    deployer.deploy(user_config(variants=variants(50, 50, shadow=True)))
    ids = {f"shadow-{uuid.uuid4().hex}" for _ in range(30)}
    replies = [deployer.predict(RECORD, {"X-Request-Id": rid}) for rid in sorted(ids)]
    assert {r.status for r in replies} == {200}
    assert "shadow-hgb" not in {r.variant for r in replies}
    assert all(r.body["variant"] != "shadow-hgb" for r in replies)
    shadowed = deployer.history(ids, variant="shadow-hgb", shadow=True)
    assert {row["request_id"] for row in shadowed} == ids
    assert all((row["model_name"], row["model_version"]) == ("iris", "3") for row in shadowed)
    assert all(row["predictions"] == ["setosa"] for row in shadowed)


def test_feedback_is_stored_once_and_unknown_ids_are_reported(
    deployer: Deployer, cluster: Cluster
) -> None:
    import sqlalchemy as sa

    deployer.ensure(user_config())
    ids = {f"fb-{uuid.uuid4().hex}" for _ in range(3)}
    for rid in ids:
        assert deployer.predict(RECORD, {"X-Request-Id": rid}).status == 200
    assert len(deployer.history(ids, shadow=False)) == 3  # flushed to the database
    items = [{"request_id": rid, "label": "setosa"} for rid in sorted(ids)]
    url = f"{deployer.url}/feedback"
    first = requests.post(
        url, json=[*items, {"request_id": "never-seen", "label": "setosa"}], timeout=10
    )
    assert first.json() == {"accepted": 4, "unknown_request_ids": ["never-seen"], "refused": []}
    again = requests.post(url, json=items[0], timeout=10)
    assert again.json() == {"accepted": 1, "unknown_request_ids": [], "refused": []}
    bad = requests.post(url, json={"request_id": "x"}, timeout=10)
    assert bad.status_code == 422 and "give exactly one of label" in bad.json()["detail"]
    # a label of another vocabulary is refused, naming the model's classes; the rest is taken
    other = requests.post(
        url, json={"request_id": items[1]["request_id"], "label": "class_0"}, timeout=10
    )
    assert other.status_code == 422, other.text
    assert (
        "'class_0' is not one of the model's classes: setosa, versicolor, virginica"
        in (other.json()["detail"])
    )
    mixed = requests.post(
        url, json=[items[2], {"request_id": items[1]["request_id"], "label": 7}], timeout=10
    ).json()
    assert mixed["accepted"] == 1 and [r["request_id"] for r in mixed["refused"]] == [
        items[1]["request_id"]
    ]
    valued = requests.post(
        url, json={"request_id": items[2]["request_id"], "value": 1.5}, timeout=10
    )
    assert valued.status_code == 422 and "send a 'label'" in valued.json()["detail"]

    engine = sa.create_engine(cluster.locations.event_store_url)
    query = sa.text("SELECT count(*) FROM raysplit_feedback WHERE request_id LIKE 'fb-%'")
    for _ in range(60):
        with engine.connect() as conn:
            stored = conn.execute(query).scalar()
        if stored == 3:
            break
        time.sleep(0.5)
    assert stored == 3  # idempotent per request id
    engine.dispose()


def _accuracy_counts(deployer: Deployer, variant: str) -> tuple[int, int]:
    """(labelled, correct) of one variant in the report, as its accuracy is computed."""
    report = requests.get(f"{deployer.url}/experiment", timeout=30).json()
    (found,) = [v for v in report["variants"] if v["name"] == variant]
    accuracy = found["accuracy"]
    correct = 0 if accuracy is None else round(accuracy["estimate"] * found["feedback"])
    return found["feedback"], correct


def _report_reaches(deployer: Deployer, variant: str, expected: tuple[int, int]) -> tuple:
    """The variant's counts once they are ``expected`` (feedback is written off the request
    path), or what they are after 30 s."""
    for _ in range(60):
        counts = _accuracy_counts(deployer, variant)
        if counts == expected:
            break
        time.sleep(0.5)
    return counts


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_corrected_label_moves_the_reports_accuracy_by_one_request(
    deployer: Deployer, store: str, request: pytest.FixtureRequest
) -> None:
    """Issue 38, over HTTP on both stores: a label of another vocabulary is refused naming
    the model's classes; a wrong label is corrected with ``"replace": true``, and the
    report's correct count moves by that one request while its labelled count does not."""
    options = None
    if store == "postgresql":
        events = request.getfixturevalue("events_postgres")
        options = {"runtime_env": {"env_vars": {"RAYSPLIT_EVENT_STORE_URL": events}}}
    deployer.ensure(user_config(), actor_options=options)
    rid = f"fix-{uuid.uuid4().hex}"
    reply = deployer.predict(RECORD, {"X-Request-Id": rid})
    assert reply.status == 200 and reply.variant is not None
    predicted = reply.body["predictions"][0]
    wrong = next(c for c in reply.body["classes"] if c != predicted)
    deployer.history({rid}, shadow=False)  # its prediction is in the database
    labelled, correct = _accuracy_counts(deployer, reply.variant)
    url = f"{deployer.url}/feedback"
    receipt = {"accepted": 1, "unknown_request_ids": [], "refused": []}
    other = requests.post(url, json={"request_id": rid, "label": "class_0"}, timeout=10)
    assert other.status_code == 422, other.text
    assert (
        "'class_0' is not one of the model's classes: setosa, versicolor, virginica"
        in (other.json()["detail"])
    )
    assert requests.post(url, json={"request_id": rid, "label": wrong}, timeout=10).json() == (
        receipt
    )
    expected = (labelled + 1, correct)
    assert _report_reaches(deployer, reply.variant, expected) == expected
    fix = {"request_id": rid, "label": predicted, "replace": True}
    assert requests.post(url, json=fix, timeout=10).json() == receipt
    expected = (labelled + 1, correct + 1)
    assert _report_reaches(deployer, reply.variant, expected) == expected
    typo = requests.post(url, json={**fix, "replace": "yes"}, timeout=10)
    assert typo.status_code == 422
    assert typo.json()["detail"] == "feedback: replace: must be JSON true or false, not 'yes'"


def test_weights_change_under_load_without_a_failed_request(deployer: Deployer) -> None:
    deployer.deploy(user_config(variants=variants(90, 10)))
    replicas_before = deployer.replica_ids()
    assert len(replicas_before) == 2
    replies: list = []
    stop = threading.Event()

    def generate() -> None:
        while not stop.is_set() and len(replies) < 20_000:
            replies.extend(deployer.load(50, threads=4))

    loader = threading.Thread(target=generate)
    loader.start()
    try:
        # as README says: edit the weights in the file and `serve deploy` it again
        deployer.deploy(user_config(variants=variants(10, 90)), cli=True)
    finally:
        stop.set()
        loader.join(timeout=120)
    assert len(replies) >= 50
    assert [r for r in replies if r.status != 200] == []
    after = deployer.load(1000)
    counts = Counter(r.variant for r in after)
    assert chisquare([counts["champion"], counts["challenger"]], [100, 900]).pvalue > 0.001
    assert deployer.replica_ids() == replicas_before, "reconfigure must not restart replicas"
    assert {r.replica for r in replies} <= replicas_before


MALFORMED = {
    "missing feature": ({"sepal_length": 1.0}, 422, "missing feature(s): sepal_width"),
    "extra feature": ({**RECORD, "colour": 2}, 422, "unknown feature(s): colour"),
    "wrong type": ({**RECORD, "sepal_width": "wide"}, 422, "'sepal_width' must be a number"),
    "huge number": (
        '{"sepal_length": 1e999, "sepal_width": 1, "petal_length": 1, "petal_width": 1}',
        400,
        "number is infinity",
    ),
    "NaN literal": ('{"sepal_length": NaN}', 400, "not valid JSON"),
    "empty batch": ({"instances": []}, 422, "instances is empty"),
    "oversized batch": ({"instances": [RECORD] * 1001}, 422, "exceeds the limit of 1000"),
    "not an object": ([1, 2, 3], 422, "body must be a JSON object"),
    "invalid JSON": ("{not json", 400, "not valid JSON"),
    "empty body": ("", 400, "request body is empty"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_input_gets_a_4xx_naming_the_problem(deployer: Deployer, case: str) -> None:
    deployer.ensure(user_config())  # the default limits (1000 rows), no API keys
    body, status, message = MALFORMED[case]
    # raw text declared as JSON, as a client with a bug sends it (undeclared is a 415)
    kwargs = (
        {"data": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, str)
        else {"json": body}
    )
    response = requests.post(f"{deployer.url}/predict", timeout=10, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_oip_v2_inference_from_tritonclient(deployer: Deployer) -> None:
    import numpy as np
    import tritonclient.http as triton

    deployer.ensure(user_config(variants=variants(50, 50)))
    client = triton.InferenceServerClient(url=f"127.0.0.1:{deployer.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris")
    metadata = client.get_model_metadata("champion")
    assert [i["name"] for i in metadata["inputs"]] == list(RECORD)

    tensor = triton.InferInput("input-0", [2, 4], "FP64")
    tensor.set_data_from_numpy(
        np.array([list(RECORD.values()), [6.7, 3.0, 5.2, 2.3]]), binary_data=False
    )
    outputs = [
        triton.InferRequestedOutput(n, binary_data=False) for n in ("predict", "predict_proba")
    ]
    result = client.infer("challenger", [tensor], outputs=outputs)
    assert [str(p) for p in result.as_numpy("predict")] == ["setosa", "virginica"]
    assert result.as_numpy("predict_proba").shape == (2, 3)
    assert result.get_response()["parameters"]["variant"] == "challenger"
    routed = client.infer("iris", [tensor], outputs=outputs)
    assert routed.get_response()["parameters"]["variant"] in {"champion", "challenger"}
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [tensor], outputs=outputs)
    # tritonclient's defaults: binary tensor extension both ways, every output asked for
    binary = triton.InferInput("input-0", [2, 4], "FP32")
    binary.set_data_from_numpy(np.array([list(RECORD.values()), [6.7, 3.0, 5.2, 2.3]], "f4"))
    answer = client.infer("challenger", [binary])
    assert [p.decode() for p in answer.as_numpy("predict")] == ["setosa", "virginica"]
    np.testing.assert_allclose(
        answer.as_numpy("predict_proba"), result.as_numpy("predict_proba"), atol=1e-5
    )
    assert all("binary_data_size" in o["parameters"] for o in answer.get_response()["outputs"])


def test_promoted_alias_is_followed_without_a_deploy(deployer: Deployer, cluster: Cluster) -> None:
    from mlflow import MlflowClient

    from raysplit.core.registry import move_alias, rollback_alias

    deployer.deploy(user_config(alias_refresh_s=0.5))
    uri = cluster.locations.mlflow_tracking_uri  # explicit: other tests move MLflow's globals
    client = MlflowClient(uri, uri)

    def champion_versions() -> set[str]:
        seen = set()
        for _ in range(10):  # ask both replicas
            reply = deployer.predict(RECORD, {"X-Variant": "champion"})
            seen.add(reply.body["model"]["version"])
        return seen

    def wait_for(version: str) -> None:
        for _ in range(120):
            if champion_versions() == {version}:
                return
            time.sleep(0.5)
        raise AssertionError(f"champion never moved to version {version}: {champion_versions()}")

    move_alias(client, "iris", "champion", "3")
    try:
        wait_for("3")
        assert all(r.status == 200 for r in deployer.load(200))
    finally:
        rollback_alias(client, "iris", "champion")
    wait_for("1")


def test_experiment_report_over_real_traffic_and_feedback(deployer: Deployer) -> None:
    import subprocess

    from tests.integration.test_cli import RAYSPLIT
    from tune.datasets import load_dataset

    name = f"iris-report-{uuid.uuid4().hex[:6]}"
    deployer.deploy(user_config(experiment=name, variants=variants(50, 50, shadow=True)))
    data = load_dataset("iris")
    records = data.features.to_dict(orient="records")
    ids = {}
    live = {}
    for i in range(300):
        rid = f"{name}-{i}"
        ids[rid] = data.target[i % 150]
        reply = deployer.predict(records[i % 150], {"X-Request-Id": rid})
        assert reply.status == 200
        live[rid] = reply.body["predictions"]
    assert len(deployer.history(set(ids), shadow=False)) == 300
    shadowed = deployer.history(set(ids), variant="shadow-hgb", shadow=True)
    agreeing = sum(row["predictions"] == live[row["request_id"]] for row in shadowed)
    feedback = [{"request_id": rid, "label": label} for rid, label in ids.items()]
    assert requests.post(f"{deployer.url}/feedback", json=feedback, timeout=30).json() == {
        "accepted": 300,
        "unknown_request_ids": [],
        "refused": [],
    }

    for _ in range(60):  # feedback is written off the request path
        report = requests.get(f"{deployer.url}/experiment", timeout=30).json()
        if sum(v["feedback"] for v in report["variants"] if not v["shadow"]) == 300:
            break
        time.sleep(0.5)
    assert report["experiment"] == name and report["requests"] == 300
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["champion"]["served"] + by_name["challenger"]["served"] == 300
    assert by_name["champion"]["accuracy"]["estimate"] > 0.9
    assert by_name["shadow-hgb"]["shadow"] and by_name["shadow-hgb"]["served"] == 300
    # the shadow's agreement is the share of requests it answered as the live variant did
    agreement = by_name["shadow-hgb"]["agreement_with_live"]
    assert agreement["estimate"] == pytest.approx(agreeing / 300)
    assert agreement["low"] < agreement["estimate"] <= agreement["high"]
    assert agreement["estimate"] > 0.9  # all three models get iris nearly right
    assert set(by_name["champion"]["drift"]) == set(RECORD)
    assert report["srm_p_value"] > 0.001
    (comparison,) = report["comparisons"]
    assert (comparison["control"], comparison["challenger"]) == ("champion", "challenger")
    # two models a point or so apart on iris: never "better" or "worse" at 150 rows per arm;
    # "no detectable difference" once the sequential sample size is reached, else not yet
    assert comparison["always_valid_p_value"] >= 0.05, comparison
    planned = comparison["sample_size"]
    enough = planned is None or planned["collected"] >= planned["sequential"]
    expected = "no detectable difference" if enough else "not enough data"
    assert comparison["verdict"] == expected, comparison
    # every label came with the control model's confidence in its request: the split
    # strata's comparison is CUPED-adjusted, and says by how much
    assert comparison["variance_reduction"] is not None, comparison
    text = subprocess.run(
        [str(RAYSPLIT), "report", "--url", deployer.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"experiment {name} (classification): 300 live requests" in text
    assert "challenger vs champion: accuracy difference" in text


def register_iris_model(cluster: Cluster, model: Any, alias: str) -> str:
    """Fit ``model`` on iris, log it and register it as models:/iris@ALIAS; its version."""
    from tests.models import iris, log_model
    from tune.tracking import connect, ensure_experiment

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYSPLIT_HOME", str(cluster.locations.home))
        # connect() exports both URIs to os.environ: set here so they are undone on exit
        patch.setenv("MLFLOW_TRACKING_URI", cluster.locations.mlflow_tracking_uri)
        patch.setenv("MLFLOW_REGISTRY_URI", cluster.locations.mlflow_registry_uri)
        client = connect(cluster.locations)
        experiment = ensure_experiment(client, f"iris-{alias}", cluster.locations)
        x, y = iris()
        info = log_model(model, x, y, name="iris", alias=alias, experiment_id=experiment)
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def fragile_version(deployer: Deployer, cluster: Cluster) -> str:
    """An iris model that raises on negative inputs (log of the features), registered as
    models:/iris@fragile: a real model failure, not a simulated one."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    model = make_pipeline(FunctionTransformer(np.log), LogisticRegression(max_iter=500))
    return register_iris_model(cluster, model, "fragile")


def test_a_failing_model_is_a_500_counted_against_its_variant(
    deployer: Deployer, fragile_version: str
) -> None:
    name = f"iris-fragile-{uuid.uuid4().hex[:6]}"
    champion = {**variants()[0], "weight": 0}  # reached only when forced
    fragile = {"name": "fragile", "model_uri": "models:/iris@fragile", "weight": 100}
    deployer.deploy(user_config(experiment=name, variants=[champion, fragile]))
    negative = {**RECORD, "sepal_width": -1.0}
    failed = deployer.load(20, threads=2, body=negative)
    assert {r.status for r in failed} == {500}
    detail = failed[0].body["detail"]
    assert f"variant 'fragile' (models:/iris/{fragile_version}) failed to predict" in detail
    assert "NaN" in detail  # scikit-learn's own reason
    fine = deployer.load(10, threads=2)
    forced = deployer.load(10, lambda i: {"X-Variant": "champion"}, threads=2, body=negative)
    assert {r.status for r in fine + forced} == {200}
    for _ in range(60):  # events are written off the request path
        report = requests.get(f"{deployer.url}/experiment", timeout=30).json()
        by_name = {v["name"]: v for v in report["variants"]}
        if report["requests"] == 40:
            break
        time.sleep(0.5)
    assert (by_name["fragile"]["assigned"], by_name["fragile"]["served"]) == (30, 10)
    assert by_name["fragile"]["errors"] == report["errors"] == 20
    # forced requests: on their own line, never counted as assigned by the split
    assert (by_name["champion"]["assigned"], by_name["champion"]["forced"]) == (0, 10)
    assert [(f["variant"], f["requests"], f["errors"]) for f in report["forced"]] == [
        ("champion", 10, 0)
    ]
    summary = requests.get(f"{deployer.url}/metrics/summary", timeout=30).json()
    assert summary["variants"]["fragile"]["error_rate"] == pytest.approx(20 / 30)


def test_concurrent_requests_share_model_calls_without_mixing_answers(
    deployer: Deployer, fragile_version: str
) -> None:
    """200 requests from 16 connections to two variants, so the ingress stacks rows of
    different requests into shared model calls: every answer must be the one that request
    gets alone, and only the requests that break the fragile model fail."""
    from sklearn.datasets import load_iris

    iris = load_iris()
    rows = [dict(zip(RECORD, map(float, iris.data[i]), strict=True)) for i in range(0, 150, 5)]
    negative = {**RECORD, "sepal_width": -1.0}
    fragile = {"name": "fragile", "model_uri": "models:/iris@fragile", "weight": 50}
    deployer.deploy(user_config(variants=[*variants(50, 0)[:1], fragile]))
    alone = {
        (variant, i): deployer.predict(row, {"X-Variant": variant}).body["predictions"]
        for i, row in enumerate(rows)
        for variant in ("champion", "fragile")
    }
    plan = [
        ("fragile" if i % 2 else "champion", None if i % 7 == 0 else i % len(rows))
        for i in range(200)
    ]
    local = threading.local()

    def one(step: tuple[str, int | None]) -> Reply:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        variant, row = step
        body = negative if row is None else rows[row]
        return deployer.predict(body, {"X-Variant": variant}, local.session)

    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(one, plan))
    for (variant, row), reply in zip(plan, replies, strict=True):
        if row is None and variant == "fragile":
            assert reply.status == 500, reply.body
            assert "failed to predict" in reply.body["detail"]
        elif row is None:
            assert reply.status == 200
        else:
            assert reply.status == 200, reply.body
            assert reply.variant == variant
            assert reply.body["predictions"] == alone[(variant, row)]
    assert sum(r.status == 500 for r in replies) == sum(
        1 for v, row in plan if v == "fragile" and row is None
    )


def test_a_known_better_challenger_wins_over_http(deployer: Deployer, cluster: Cluster) -> None:
    """The control always predicts one class (a third of iris right); the challenger is the
    registered logistic regression. 300 real predictions with their true labels as
    feedback: the report must say the challenger is better, and why."""
    from sklearn.dummy import DummyClassifier

    register_iris_model(cluster, DummyClassifier(strategy="most_frequent"), "weak")
    from tune.datasets import load_dataset

    name = f"iris-known-{uuid.uuid4().hex[:6]}"
    weak = {"name": "weak", "model_uri": "models:/iris@weak", "weight": 50}
    good = {"name": "good", "model_uri": "models:/iris@challenger", "weight": 50}
    deployer.deploy(user_config(experiment=name, control="weak", variants=[weak, good]))
    data = load_dataset("iris")
    records = data.features.to_dict(orient="records")
    truth = {}
    for i in range(300):
        rid = f"{name}-{i}"
        truth[rid] = data.target.iloc[i % 150]
        assert deployer.predict(records[i % 150], {"X-Request-Id": rid}).status == 200
    deployer.history(set(truth), shadow=False)
    feedback = [{"request_id": rid, "label": label} for rid, label in truth.items()]
    assert requests.post(f"{deployer.url}/feedback", json=feedback, timeout=30).ok
    for _ in range(60):
        report = requests.get(f"{deployer.url}/experiment", timeout=30).json()
        if sum(v["feedback"] for v in report["variants"]) == 300:
            break
        time.sleep(0.5)
    (comparison,) = report["comparisons"]
    assert (comparison["control"], comparison["challenger"]) == ("weak", "good")
    assert comparison["verdict"] == "challenger better"
    assert comparison["always_valid_p_value"] < 0.05 and comparison["p_value"] < 0.001
    assert comparison["difference"]["low"] > 0.4  # about 0.33 against about 0.97
    by_name = {v["name"]: v for v in report["variants"]}
    # the intervals do not overlap; where the weak one lies depends on which records the
    # random split gave it (a third of iris is the class it always predicts)
    assert by_name["weak"]["accuracy"]["high"] < by_name["good"]["accuracy"]["low"]
