"""A replica serves a registered version's ONNX conversion only when it is verified, against
a real embedded MLflow (no Ray): logged and registered with tune's own helpers, loaded
through ``resolve``/``load`` as a replica loads it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from raysplit.core.onnx_check import ONNX_FILE, PROBA_ATOL
from raysplit.core.reference_stats import REFERENCE_STATS_FILE, reference_stats
from serve_app.config.ingress import VariantConfig
from serve_app.predict.models import LoadedModel, load, resolve
from tests.models import embedded_registry
from tune.datasets import Split, Task, load_dataset, split_dataset
from tune.families import FAMILIES
from tune.model_logging import choose_serialization, onnx_files, onnx_tags
from tune.onnx_export import export_onnx
from tune.registry import register_version

pytestmark = pytest.mark.integration


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """The embedded SQLite registry under a fresh RAYSPLIT_HOME."""
    return embedded_registry(monkeypatch, "onnx")


def iris_split() -> Split:
    return split_dataset(load_dataset("iris"), test_size=0.2, seed=0, cv_folds=3)


def register(
    client: MlflowClient, name: str, model: Any, split: Split, swap_graph: bytes | None = None
) -> dict[str, str]:
    """Log and register ``model`` as `raysplit tune` does (skops, signature, reference
    statistics and the ONNX files in extra_files, the version's ONNX tags); with
    ``swap_graph`` the logged model.onnx is replaced by that graph. Returns the tags."""
    serialization, trusted = choose_serialization(model, split.x_test)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as run:
        stats = Path(tmp) / REFERENCE_STATS_FILE
        stats.write_text(
            reference_stats(split.x_train, split.y_train, classification=True).model_dump_json()
        )
        check, files = onnx_files(model, split.x_test, Path(tmp))
        if swap_graph is not None:
            (Path(tmp) / ONNX_FILE).write_bytes(swap_graph)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(split.x_train, model.predict(split.x_train)),
            serialization_format=serialization,
            skops_trusted_types=trusted,
            extra_files=[str(stats), *files],
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        )
        tags = onnx_tags(check)
        register_version(
            client, name, info.model_uri, run.info.run_id, tags, "champion", info.model_id
        )
    return tags


def load_champion(client: MlflowClient, name: str) -> LoadedModel:
    variant = VariantConfig(name="a", model_uri=f"models:/{name}@champion", weight=1)
    return load(variant, resolve(variant.model_uri, client))


def sklearn_answers(model: LoadedModel, rows: np.ndarray):
    """What the same loaded model answers through scikit-learn."""
    return LoadedModel(model.resolved, model.estimator, model.features, model.classes).predict(rows)


def test_a_verified_version_is_served_by_onnx(client: MlflowClient) -> None:
    split = iris_split()
    model = FAMILIES[(Task.CLASSIFICATION, "svc")].build({"C": 1.0, "gamma": 0.1}, seed=0)
    model.fit(split.x_train, split.y_train)

    tags = register(client, "iris", model, split)
    served = load_champion(client, "iris")

    assert tags["raysplit.onnx"] == "verified"
    version = client.get_model_version("iris", "1")
    assert version.tags["raysplit.onnx"] == "verified"
    assert served.runtime == "onnx", served.runtime_reason
    assert "verified at training and at load" in (served.runtime_reason or "")
    rows = split.x_test.to_numpy()
    labels, proba = served.predict(rows)
    expected_labels, expected_proba = sklearn_answers(served, rows)
    assert labels == expected_labels
    assert np.abs(np.asarray(proba) - np.asarray(expected_proba)).max() <= PROBA_ATOL


def test_a_swapped_graph_is_served_by_sklearn(client: MlflowClient) -> None:
    """The check file says verified, but model.onnx is another model's conversion: the
    replica's check at load catches it and serves scikit-learn."""
    split = iris_split()
    model = FAMILIES[(Task.CLASSIFICATION, "logistic_regression")].build({"C": 0.05})
    model.fit(split.x_train, split.y_train)
    other = FAMILIES[(Task.CLASSIFICATION, "random_forest")].build(
        {"n_estimators": 5, "max_depth": 2}, seed=0
    )
    other.fit(split.x_train, split.y_train)
    _, other_graph = export_onnx(other, split.x_test)
    assert other_graph is not None

    register(client, "iris", model, split, swap_graph=other_graph)
    served = load_champion(client, "iris")

    assert served.runtime == "sklearn"
    assert (served.runtime_reason or "").startswith("ONNX disagrees with scikit-learn at load")
    rows = split.x_test.to_numpy()
    assert served.predict(rows) == sklearn_answers(served, rows)


def test_an_unverified_version_is_served_by_sklearn_and_says_why(client: MlflowClient) -> None:
    split = iris_split()
    model = FAMILIES[(Task.CLASSIFICATION, "knn")].build({"n_neighbors": 5})
    model.fit(split.x_train, split.y_train)

    tags = register(client, "iris", model, split)
    served = load_champion(client, "iris")

    assert tags["raysplit.onnx"] == "not_verified" and "k-NN" in tags["raysplit.onnx_reason"]
    assert client.get_model_version("iris", "1").tags["raysplit.onnx"] == "not_verified"
    assert served.runtime == "sklearn"
    assert "ONNX not verified at training" in (served.runtime_reason or "")
