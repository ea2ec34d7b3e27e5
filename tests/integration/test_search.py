"""Real searches on a real Ray cluster, logged to a real MLflow store (embedded SQLite and
an `mlflow server` on PostgreSQL), registered in the real registry and loaded back."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from raysplit.core.settings import Locations
from tests.models import seed_embedded_store
from tune.config import TuneSpec
from tune.search import SearchOutcome, run_search

pytestmark = pytest.mark.integration


def search(ray_address: str, **sections: Any) -> tuple[SearchOutcome, MlflowClient]:
    data = {"dataset": {"name": "iris"}, **sections}
    data.setdefault("register", {})
    data["register"].setdefault("model_name", f"iris-{uuid.uuid4().hex[:8]}")
    locations = Locations.resolve()
    seed_embedded_store(locations)
    outcome = run_search(TuneSpec.model_validate(data), locations)
    return outcome, MlflowClient(locations.mlflow_tracking_uri)


def children(client: MlflowClient, outcome: SearchOutcome) -> list:
    return client.search_runs(
        [outcome.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
    )


def test_search_logs_nested_runs_and_registers_a_loadable_model(
    ray_address: str, tracking: str
) -> None:
    outcome, client = search(
        ray_address,
        search={
            "families": ["knn", "logistic_regression"],
            "num_samples": 6,
            "cv_folds": 3,
            "early_stopping": "none",
        },
    )
    assert (outcome.trials, outcome.completed_trials) == (6, 6)

    if tracking == "server":
        location = client.get_experiment(outcome.experiment_id).artifact_location
        assert location.startswith("mlflow-artifacts:"), location
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["metric"] == "accuracy"
    assert parent.data.metrics["best_cv_accuracy"] == pytest.approx(outcome.best_cv_score)
    assert {"test_accuracy", "test_f1_macro", "test_roc_auc"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"confusion_matrix.png", "reference_stats.json"} <= artifacts
    digests = {d.dataset.digest for d in parent.inputs.dataset_inputs}

    trials = children(client, outcome)
    assert len(trials) == 6
    for trial in trials:
        assert trial.info.status == "FINISHED"
        family = trial.data.params["family"]
        assert family in {"knn", "logistic_regression"}
        history = client.get_metric_history(trial.info.run_id, "fold_score")
        assert sorted(m.step for m in history) == [0, 1, 2]
        mean = sum(m.value for m in history) / 3
        assert trial.data.metrics["cv_mean"] == pytest.approx(mean)
        assert {"cv_std", "fit_time_s"} <= set(trial.data.metrics)

    name = outcome.model_name
    version = client.get_model_version_by_alias(name, "challenger")
    assert str(version.version) == outcome.model_version
    assert version.tags["raysplit.search_run_id"] == outcome.parent_run_id
    assert version.tags["raysplit.metric"] == "accuracy"
    assert version.tags["raysplit.dataset_digest"] in digests
    assert float(version.tags["raysplit.cv_score"]) == pytest.approx(outcome.best_cv_score, 1e-5)

    model = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    assert model.metadata.get_input_schema().input_names() == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    assert list(model.predict(pd.DataFrame([record]))) == ["setosa"]
    classifier = mlflow.sklearn.load_model(f"models:/{name}@challenger")
    assert list(classifier.classes_) == ["setosa", "versicolor", "virginica"]

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@challenger"))
    stats = json.loads((local / "extra_files" / "reference_stats.json").read_text())
    assert set(stats["features"]) == set(record)
    assert (local / "model.skops").is_file()


def test_asha_stops_poor_trials_and_marks_their_runs(ray_address: str, home: Path) -> None:
    outcome, client = search(
        ray_address,
        search={"num_samples": 12, "cv_folds": 5, "early_stopping": "asha", "seed": 3},
    )
    trials = children(client, outcome)
    assert len(trials) == outcome.trials == 12
    stopped = [t for t in trials if t.data.tags["raysplit.early_stopped"] == "true"]
    assert len(stopped) == outcome.early_stopped_trials
    assert outcome.completed_trials + outcome.early_stopped_trials == 12
    for trial in trials:
        folds = trial.data.metrics["folds_done"]
        assert (folds < 5) == (trial in stopped)
        assert len(client.get_metric_history(trial.info.run_id, "fold_score")) == folds


@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_search_logs_only_each_trials_own_family(
    ray_address: str, home: Path, algorithm: str
) -> None:
    outcome, client = search(
        ray_address,
        search={
            "algorithm": algorithm,
            "families": ["svc", "knn", "random_forest"],
            "num_samples": 6,
            "cv_folds": 3,
        },
    )
    for trial in children(client, outcome):
        params = set(trial.data.params) - {"family"}
        own = {
            "svc": {"C", "gamma"},
            "knn": {"n_neighbors", "weights"},
            "random_forest": {"n_estimators", "max_depth", "min_samples_leaf", "max_features"},
        }[trial.data.params["family"]]
        assert params == own


def test_grid_search_runs_every_candidate_once(ray_address: str, home: Path) -> None:
    outcome, _ = search(
        ray_address,
        search={
            "algorithm": "grid",
            "families": {
                "knn": {"n_neighbors": {"choice": [3, 9]}, "weights": "distance"},
                "logistic_regression": {"C": {"choice": [0.1, 1.0, 10.0]}},
            },
            "cv_folds": 3,
            "early_stopping": "none",
        },
    )
    assert outcome.trials == outcome.completed_trials == 5


def test_regression_search_logs_residuals_and_rmse(ray_address: str, home: Path) -> None:
    outcome, client = search(
        ray_address,
        dataset={"name": "diabetes"},
        search={"families": ["ridge"], "metric": "rmse", "num_samples": 3, "cv_folds": 3},
        register={"model_name": "diabetes-test", "alias": "champion"},
    )
    parent = client.get_run(outcome.parent_run_id)
    assert {"test_r2", "test_rmse", "test_mae"} <= set(parent.data.metrics)
    assert "residuals.png" in {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    version = client.get_model_version_by_alias("diabetes-test", "champion")
    assert version.tags["raysplit.task"] == "regression"
    assert outcome.best_cv_score > 40  # RMSE in target units, lower is better
