"""Registering small real models for fault tests, and breaking their files on purpose."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
from sklearn.datasets import load_iris, load_wine
from sklearn.linear_model import LogisticRegression

from raysplit.core.settings import Locations
from tests.models import log_model
from tune.tracking import connect, ensure_experiment

DATASETS = {"iris": load_iris, "wine": load_wine}


def register(
    locations: Locations, name: str, dataset: str = "iris", serialization: str = "skops"
) -> tuple[str, str]:
    """Fit a logistic regression on a bundled dataset and register it as a new version of
    ``name``; returns (version, the logged model's artifact directory)."""
    x, y = DATASETS[dataset](return_X_y=True, as_frame=True)
    x.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in x.columns]  # as tune names them
    with pytest.MonkeyPatch.context() as patch:  # connect() exports MLFLOW_TRACKING_URI
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        client = connect(locations)
        experiment = ensure_experiment(client, "fault-models", locations)
        info = log_model(
            LogisticRegression(max_iter=500),
            x,
            y,
            name=name,
            serialization=serialization,
            experiment_id=experiment,
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
