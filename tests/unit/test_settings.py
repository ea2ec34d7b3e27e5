from pathlib import Path

import pytest

from raysplit.core.settings import Locations


def test_embedded_defaults_are_absolute_under_home(home: Path) -> None:
    locations = Locations.resolve()
    assert locations.home == home
    assert locations.mlflow_embedded
    assert locations.mlflow_tracking_uri == f"sqlite:///{home}/mlflow.db"
    assert locations.mlflow_artifact_root == (home / "mlartifacts").as_uri()
    assert locations.tune_storage_path.is_absolute()
    assert not locations.ray_address.endswith(":6379")


def test_tracking_server_from_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    locations = Locations.resolve()
    assert not locations.mlflow_embedded
    assert locations.mlflow_registry_uri == "http://mlflow:5000"
    assert locations.mlflow_artifact_root is None
