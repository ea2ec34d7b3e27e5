"""Small real models for tests, logged and registered the way `raysplit tune` logs its best
model (skops, a signature, pinned pip requirements, the training data's reference
statistics inside the model), without running a search: seconds instead of a Tune run.

The caller points MLflow at the store it wants (environment or ``connect()``)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import skops.io
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from sklearn.base import is_classifier

from raysplit.core.reference_stats import REFERENCE_STATS_FILE, reference_stats
from raysplit.core.registry import move_alias
from raysplit.core.settings import Locations
from tune.tracking import connect, ensure_experiment


@functools.cache
def _migrated_mlflow_db() -> Path:
    """An empty MLflow database with every migration applied, made once per process: a
    fresh SQLite store runs MLflow's Alembic migrations (about 1.5 s of CPU), a copy is
    ready in milliseconds. Its Default experiment's artifacts would go under the template's
    directory; the tests log to experiments of their own, with artifacts in their home."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    directory = Path(tempfile.mkdtemp(prefix="raysplit-mlflow-template-"))
    atexit.register(shutil.rmtree, directory, True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    # the tracking store's migrations create the registry's tables as well
    SqlAlchemyStore(uri, (directory / "artifacts").as_uri()).engine.dispose()
    return directory / "mlflow.db"


def seed_embedded_store(locations: Locations) -> None:
    """Give an embedded MLflow store that does not exist yet its schema by copying, for a
    test that is about to create it and is not about how it is created."""
    database = locations.home / "mlflow.db"
    if locations.mlflow_embedded and not database.exists():
        locations.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_migrated_mlflow_db(), database)


def embedded_registry(monkeypatch: pytest.MonkeyPatch, experiment: str) -> MlflowClient:
    """The embedded SQLite registry under the current RAYSPLIT_HOME, with ``experiment``
    the active one. connect() exports both URIs to os.environ, and mlflow.set_experiment()
    makes the experiment process-wide (a module global and MLFLOW_EXPERIMENT_ID): all are
    set through ``monkeypatch`` first, so they are undone after the test and a later test's
    fresh store is not asked for this store's experiment id."""
    locations = Locations.resolve()
    seed_embedded_store(locations)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", locations.mlflow_tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", locations.mlflow_registry_uri)
    # setenv records the variable's absence (delenv of an unset one records nothing), so
    # the undo removes what set_experiment() exports
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    client = connect(locations)
    mlflow.set_experiment(experiment_id=ensure_experiment(client, experiment, locations))
    return client


def iris() -> tuple[pd.DataFrame, pd.Series]:
    """Iris as `raysplit tune` sees it: identifier feature names, species names as labels."""
    from tune.datasets import load_dataset

    data = load_dataset("iris")
    return data.features, data.target


def diabetes() -> tuple[pd.DataFrame, pd.Series]:
    """Diabetes (regression) as `raysplit tune` sees it: ten numeric features, progression."""
    from tune.datasets import load_dataset

    data = load_dataset("diabetes")
    return data.features, data.target


def log_model(
    model: Any,
    x: pd.DataFrame,
    y: pd.Series | None = None,
    *,
    name: str,
    alias: str | None = None,
    serialization: str = "skops",
    trusted: list[str] | None = None,
    experiment_id: str | None = None,
) -> ModelInfo:
    """Fit ``model`` on ``x``/``y`` (when ``y`` is given), log it in a run of its own and
    register it as a new version of ``name``, pointing ``alias`` at it.

    With ``y`` the model carries ``reference_stats.json`` (drift needs it), as tune's do.
    ``trusted`` overrides the skops types recorded in the MLmodel (default: the file's own).
    """
    if y is not None:
        model.fit(x, y)
    if serialization == "skops" and trusted is None:
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id):
        extra_files = []
        if y is not None:
            stats = Path(tmp) / REFERENCE_STATS_FILE
            classification = is_classifier(model)  # regressors: no label distribution
            stats.write_text(reference_stats(x, y, classification).model_dump_json())
            extra_files.append(str(stats))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x, model.predict(x)),
            registered_model_name=name,
            serialization_format=serialization,
            skops_trusted_types=trusted if serialization == "skops" else None,
            extra_files=extra_files or None,
            # as `raysplit tune` does: without it MLflow infers them by loading the model in
            # a subprocess, seconds per model
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                include_cloudpickle=serialization == "cloudpickle",
                include_skops=serialization == "skops",
            ),
        )
    if alias is not None:  # as `raysplit tune` does, so `raysplit rollback` knows the history
        move_alias(MlflowClient(), name, alias, str(info.registered_model_version))
    return info


def log_iris_pair(experiment_id: str) -> None:
    """Two new iris versions, a k-NN as ``champion`` and a logistic regression as
    ``challenger``, in the MLflow the environment points at: the registry the fault tests
    with a cluster or MLflow of their own deploy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    x, y = iris()
    for model, alias in (
        (KNeighborsClassifier(n_neighbors=7), "champion"),
        (LogisticRegression(max_iter=500), "challenger"),
    ):
        log_model(model, x, y, name="iris", alias=alias, experiment_id=experiment_id)
