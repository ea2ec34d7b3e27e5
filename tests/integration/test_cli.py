"""The `raysplit` command line: bad input exits 2 with one line and leaves nothing behind;
a real search registers a model; aliases move and roll back in the real registry."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from raysplit.cli.main import main
from raysplit.core.settings import Locations
from tests.conftest import REPO, Cluster, free_port
from tune.registry import register_version
from tune.tracking import connect

pytestmark = pytest.mark.integration
RAYSPLIT = Path(sys.executable).parent / "raysplit"


def write_config(tmp_path: Path, dataset: dict, **search: object) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({"dataset": dataset, "search": search}))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RAYSPLIT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def bad_csv(tmp_path: Path, frame: pd.DataFrame) -> dict:
    frame.to_csv(tmp_path / "data.csv", index=False)
    return {"path": "data.csv", "target": "label"}


CASES = {
    "unknown dataset": (lambda p: {"name": "titanic"}, {}, "unknown dataset 'titanic'"),
    "missing file": (
        lambda p: {"path": "missing.csv", "target": "y"},
        {},
        "dataset file not found: .*missing.csv",
    ),
    "missing target column": (
        lambda p: bad_csv(p, pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]})),
        {},
        "target column 'label' not found; columns are: a, y",
    ),
    "non-numeric feature": (
        lambda p: bad_csv(p, pd.DataFrame({"a": [1.0, 2.0], "city": ["x", "y"], "label": [0, 1]})),
        {},
        "feature column 'city' is not numeric",
    ),
    "NaN in target": (
        lambda p: bad_csv(p, pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": [1.0, None, 0.0]})),
        {},
        "target column 'label' has 1 missing values",
    ),
    "too few rows per class": (
        lambda p: bad_csv(
            p, pd.DataFrame({"a": range(30), "label": ["a"] * 25 + ["b"] * 5}).astype({"a": float})
        ),
        {"cv_folds": 5},
        "class 'b' has 4 training rows, fewer than cv_folds=5",
    ),
    "unknown model family": (
        lambda p: {"name": "iris"},
        {"families": ["xgb"]},
        "unknown model family 'xgb'",
    ),
    "malformed search space": (
        lambda p: {"name": "iris"},
        {"families": {"knn": {"n_neighbors": {"randint": [5]}}}},
        r"search.families.knn.n_neighbors: randint needs \[low, high\]",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture
) -> None:
    dataset, search, message = CASES[case]
    config = write_config(tmp_path, dataset(tmp_path), **search)
    assert main(["tune", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("raysplit: error: ")
    assert re.search(message, err), err
    assert not home.exists(), "a rejected search must not create the data directory"


def test_unreachable_tracking_server_registers_nothing(tmp_path: Path, home: Path) -> None:
    config = write_config(tmp_path, {"name": "iris"})
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli("tune", "--config", str(config), env={"MLFLOW_TRACKING_URI": dead})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"raysplit: error: MLflow tracking server {dead} is unreachable (ConnectionError);"
        " start it, or unset MLFLOW_TRACKING_URI to use the embedded store"
    ]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run_cli("tune")
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_info_prints_resolved_locations_as_json(home: Path) -> None:
    result = run_cli("info", env={"RAYSPLIT_HOME": str(home)})
    info = Locations.model_validate_json(result.stdout)
    assert info.home == home
    assert info.mlflow_tracking_uri == f"sqlite:///{home}/mlflow.db"
    # where Ray's token lives and how a curl to the dashboard sends it (issue 38)
    token = json.loads(result.stdout)["ray_auth_token"]
    assert token["path"] == str(Path.home() / ".ray" / "auth_token")
    assert f"Bearer $(cat {token['path']})" in token["dashboard_api"]
    assert info.ray_dashboard_url in token["dashboard_api"]


def test_down_with_nothing_running_is_a_no_op(home: Path) -> None:
    result = run_cli("down", env={"RAYSPLIT_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"no raysplit cluster is running for {home}; nothing to stop"
    ]
    assert result.stderr == ""


def test_default_iris_search_from_the_shipped_config(ray_address: str, home: Path) -> None:
    """The README's search, through the real console script, joining the session's cluster."""
    result = run_cli(
        "tune",
        "--config",
        "tune/configs/iris.yaml",
        "--register",
        "iris-default",
        env={"RAY_ADDRESS": ray_address, "RAYSPLIT_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Ray: joined RAY_ADDRESS={ray_address}" in result.stdout.splitlines()
    assert "registered: models:/iris-default/1 (alias @challenger" in result.stdout
    # Tune's progress table and the outcome, not a config and a result box per trial
    assert "Trial status: 20 TERMINATED" in result.stdout
    assert "started with configuration" not in result.stdout
    assert " result " not in result.stdout, "a per-trial result box was printed"
    uri = Locations.resolve().mlflow_tracking_uri  # explicit: other tests set MLflow's globals
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias("iris-default", "challenger")
    run = client.get_run(version.tags["raysplit.search_run_id"])
    assert run.data.metrics["trials"] == 20
    assert run.data.metrics["best_cv_accuracy"] >= 0.96


def test_tune_joins_the_running_raysplit_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """Without RAY_ADDRESS, `raysplit tune` finds the cluster `raysplit up` started for its
    RAYSPLIT_HOME and runs the trials there, not on a second Ray beside it (issue 38)."""
    config = write_config(tmp_path, {"name": "iris"}, families=["knn"], num_samples=2, cv_folds=2)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAYSPLIT_HOME=str(cluster.locations.home), RAY_AUTH_MODE="token")
    name = f"iris-joined-{uuid.uuid4().hex[:6]}"
    result = subprocess.run(
        [str(RAYSPLIT), "tune", "--config", str(config), "--register", name],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert f"Ray: joined the raysplit cluster at {cluster.info.address}" in lines


def test_promote_and_rollback_move_the_alias(
    ray_address: str, tracking: str, capsys: pytest.CaptureFixture
) -> None:
    from tests.integration.test_search import search

    name = f"iris-promote-{uuid.uuid4().hex[:6]}"
    _, client = search(
        ray_address,
        search={"families": ["knn"], "num_samples": 2, "cv_folds": 3},
        register={"model_name": name},
    )
    first = client.get_model_version(name, "1")
    register_version(client, name, first.source, first.run_id, {}, "challenger")

    assert main(["promote", name, "--alias", "champion", "--version", "1"]) == 0
    assert main(["promote", name, "--alias", "champion", "--version", "2"]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert "champion -> version 2 (was version 1)" in capsys.readouterr().out

    assert main(["rollback", name, "--alias", "champion"]) == 0
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert main(["rollback", name, "--alias", "champion"]) == 2
    assert "no earlier version to roll back to" in capsys.readouterr().err

    assert main(["promote", name, "--alias", "champion", "--version", "9"]) == 2
    assert "has no version 9" in capsys.readouterr().err
    assert main(["promote", "nobody", "--version", "1"]) == 2
    assert "registered model 'nobody' does not exist" in capsys.readouterr().err


def test_failed_registration_leaves_no_model_behind(home: Path) -> None:
    client = connect(Locations.resolve())
    with pytest.raises(mlflow.exceptions.MlflowException):
        # MLflow refuses version-like aliases; the version and the new model must go too
        register_version(client, "half-registered", "models:/m-does-not-matter", None, {}, "v1")
    assert client.search_registered_models(filter_string="name = 'half-registered'") == []
