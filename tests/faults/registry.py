"""Registering small real models for fault tests, and breaking their files on purpose."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import skops.io
from mlflow.models import infer_signature
from sklearn.datasets import load_iris, load_wine
from sklearn.linear_model import LogisticRegression

from raysplit.core.settings import Locations
from tune.tracking import connect, ensure_experiment

DATASETS = {"iris": load_iris, "wine": load_wine}


def register(
    locations: Locations, name: str, dataset: str = "iris", serialization: str = "skops"
) -> tuple[str, str]:
    """Fit a logistic regression on a bundled dataset and register it as a new version of
    ``name``; returns (version, the logged model's artifact directory)."""
    x, y = DATASETS[dataset](return_X_y=True, as_frame=True)
    x.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in x.columns]  # as tune names them
    model = LogisticRegression(max_iter=500).fit(x, y)
    with pytest.MonkeyPatch.context() as patch:  # connect() exports MLFLOW_TRACKING_URI
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        client = connect(locations)
        experiment = ensure_experiment(client, "fault-models", locations)
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(x, model.predict(x)),
                registered_model_name=name,
                serialization_format=serialization,
                skops_trusted_types=(
                    skops.io.get_untrusted_types(data=skops.io.dumps(model))
                    if serialization == "skops"
                    else None
                ),
            )
        location = client.get_logged_model(info.model_id).artifact_location
    return str(info.registered_model_version), location


def corrupt(artifact_location: str) -> None:
    """Overwrite the serialised estimator with bytes no loader accepts."""
    directory = Path(urlparse(artifact_location).path)
    files = [p for p in directory.iterdir() if p.name.startswith("model.")]
    assert files, f"no model file under {directory}"
    for path in files:
        path.write_bytes(b"this is not a model" * 10)
