"""`raysplit check` and `raysplit deploy` against a real registry (the embedded MLflow
store): the shipped configs pass, and each bad kind a replica refuses exits 2 naming its
application, deployment and field, before anything is deployed."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier

from tests.conftest import REPO
from tests.faults.registry import corrupt, register
from tests.models import diabetes, embedded_registry, iris, log_model

pytestmark = pytest.mark.integration
RAYSPLIT = Path(sys.executable).parent / "raysplit"
NO_DASHBOARD = "http://127.0.0.1:9"  # nothing answers: the capacity check says so


def console_script(*args: str) -> subprocess.CompletedProcess:
    """The installed `raysplit`, as a user runs it."""
    return subprocess.run(
        [str(RAYSPLIT), *args, "--address", NO_DASHBOARD],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
        cwd=REPO,
    )


@pytest.fixture
def raysplit(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The same command in this process: the console script's interpreter start and
    imports cost about 5 s a call, and the command's code is the same. It runs in a
    directory of its own, so a stray ``./mlflow.db`` would show."""
    from raysplit.cli.main import main

    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)

    def run(*args: str) -> subprocess.CompletedProcess:
        code = main([*args, "--address", NO_DASHBOARD])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
def registry(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The aliases the shipped configs name, plus the broken models of the bad kinds."""
    from raysplit.core.settings import Locations

    embedded_registry(monkeypatch, "check")
    x, y = iris()
    log_model(KNeighborsClassifier(), x, y, name="iris", alias="champion")
    log_model(LogisticRegression(max_iter=500), x, y, name="iris", alias="challenger")
    x, y = diabetes()
    log_model(Ridge(), x, y, name="diabetes", alias="champion")
    log_model(RandomForestRegressor(n_estimators=5), x, y, name="diabetes", alias="challenger")
    locations = Locations.resolve()
    _, location = register(locations, "iris-corrupt")
    corrupt(location)
    register(locations, "wine-model", dataset="wine")
    register(locations, "iris-pickled", serialization="cloudpickle")
    return {
        "unknown model": "models:/no-such-model/1",
        "missing alias": "models:/iris@missing",
        "corrupt artifact": "models:/iris-corrupt/1",
        "other signature": "models:/wine-model/1",
        "pickled model": "models:/iris-pickled/1",
    }


def test_the_shipped_configs_pass_and_each_bad_kind_is_named(
    registry: dict[str, str], raysplit, tmp_path: Path
) -> None:
    for shipped, run in (
        ("serve_config.yaml", console_script),
        ("serve_config_rollout.yaml", raysplit),
    ):
        result = run("check", str(REPO / shipped))
        assert result.returncode == 0, result.stderr
        assert "every application's config would be applied" in result.stdout
        assert "not checked: no Ray dashboard answered" in result.stderr  # said, not hidden


def test_with_only_raysplit_home_set_every_application_is_checked_in_its_registry(
    registry: dict[str, str], raysplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after `make demo`: no MLflow variable in the shell, the registry found through
    RAYSPLIT_HOME. The second application is looked up where the first was (the first
    version put MLflow's own default back between them, so diabetes was looked up in a
    new ./mlflow.db and "not found"), and nothing is written to the working directory."""
    import mlflow.tracking._model_registry.utils as registry_state
    import mlflow.tracking._tracking_service.utils as tracking_state

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    # a fresh `raysplit` process: MLflow has no URI of its own yet (the fixture set one)
    monkeypatch.setattr(tracking_state, "_tracking_uri", None)
    monkeypatch.setattr(registry_state, "_registry_uri", None)
    result = raysplit("check", str(REPO / "serve_config.yaml"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cwd" / "mlflow.db").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # put back as it was

    base = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    expected = {
        "unknown model": "models:/no-such-model/1",
        "missing alias": "models:/iris@missing",
        "corrupt artifact": "variant 'challenger' (models:/iris-corrupt/1)",
        "other signature": "variant 'challenger' expects features",
        "pickled model": "loading a pickle runs arbitrary code",
    }
    for kind, uri in registry.items():
        config = copy.deepcopy(base)
        variants = config["applications"][0]["deployments"][0]["user_config"]["variants"]
        variants[1]["model_uri"] = uri
        path = tmp_path / f"{kind.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(config))
        result = raysplit("check", str(path))
        assert result.returncode == 2, (kind, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        field = "user_config.variants" if kind == "other signature" else "user_config.variants.1"
        assert len(errors) == 1, (kind, errors)
        assert errors[0].startswith(f"error: iris / Ingress / {field}"), (kind, errors)
        assert expected[kind] in errors[0], (kind, errors)


def test_deploy_refuses_before_sending_and_names_every_problem(
    registry: dict[str, str], raysplit, tmp_path: Path
) -> None:
    """Two problems in two applications, both listed; nothing is sent (no dashboard runs
    here: a deploy that got as far as sending would fail differently)."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    iris_config = config["applications"][0]["deployments"][0]["user_config"]
    iris_config["rollout"] = {"candidate": "nobody", "steps": [5, 50]}
    config["applications"][1]["deployments"][0]["user_config"]["variants"][0]["model_uri"] = (
        "models:/diabetes@typo"
    )
    path = tmp_path / "two-problems.yaml"
    path.write_text(yaml.safe_dump(config))
    result = raysplit("deploy", str(path))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(":")[1].strip() for e in errors] == [
        "iris / Ingress / user_config.rollout",
        "diabetes / Ingress / user_config.variants.0.model_uri",
    ], errors
    assert result.stderr.rstrip().endswith("raysplit: not deployed")
    assert "deployed" not in result.stdout


def test_a_file_serve_itself_refuses_is_one_line(home: Path, raysplit, tmp_path: Path) -> None:
    path = tmp_path / "not-serve.yaml"
    path.write_text(yaml.safe_dump({"applications": [{"name": "x"}]}))
    result = raysplit("check", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"raysplit: error: {path}: Serve refuses it")
    assert len(result.stderr.strip().splitlines()) == 1
