"""What a replica agrees to load from the registry, against a real embedded MLflow (no Ray).

Unpickling runs arbitrary code, so pickle models load only with ``allow_pickle``; skops
files load only scikit-learn/NumPy/SciPy types whatever their MLmodel says; and registered
versions whose source points outside MLflow-logged artifacts are refused before any
download.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from serve_app.config.ingress import VariantConfig
from serve_app.predict.models import LoadedModel, ModelLoadError, load, resolve
from tests.models import embedded_registry, log_model

pytestmark = pytest.mark.integration

X, Y = load_iris(return_X_y=True, as_frame=True)
ROWS = X.iloc[[0, 60, 120]].to_numpy()  # one of each species
OUTSIDE = "outside the configured tracking server"


def doubled(x):
    """A custom transform: skops stores it by name, as a type outside scikit-learn."""
    return x * 2


@pytest.fixture
def client(home: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """The embedded SQLite registry under a fresh RAYSPLIT_HOME."""
    return embedded_registry(monkeypatch, "model-safety")


def register(
    name: str,
    serialization: str,
    model=None,
    trusted: list[str] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log a fitted iris model with a signature and register it as a new version of ``name``."""
    model = model or LogisticRegression(max_iter=500).fit(X, Y)
    return log_model(model, X, name=name, serialization=serialization, trusted=trusted)


def load_uri(client: MlflowClient, uri: str, allow_pickle: bool = False) -> LoadedModel:
    variant = VariantConfig(name="a", model_uri=uri, weight=1)
    return load(variant, resolve(variant.model_uri, client), allow_pickle)


def test_a_skops_model_loads_and_predicts(client: MlflowClient) -> None:
    register("iris", "skops")
    client.set_registered_model_alias("iris", "champion", "1")

    model = load_uri(client, "models:/iris@champion")

    assert (model.resolved.uri, model.resolved.name, model.resolved.version) == (
        "models:/iris/1",
        "iris",
        "1",
    )
    assert not model.pickled
    assert model.features == list(X.columns)
    predictions, probabilities = model.predict(ROWS)
    assert predictions == [0, 1, 2]
    assert len(probabilities) == 3


def test_a_pickle_model_loads_only_with_allow_pickle(client: MlflowClient) -> None:
    register("iris-pickle", "cloudpickle")

    with pytest.raises(ModelLoadError) as refused:
        load_uri(client, "models:/iris-pickle/1")
    message = str(refused.value)
    assert message == (
        "variant 'a' (models:/iris-pickle/1): it is serialised with cloudpickle, and loading a"
        " pickle runs arbitrary code; log it with serialization_format='skops' (as `raysplit"
        " tune` does), or set allow_pickle: true in the user_config if you trust its source"
    )

    model = load_uri(client, "models:/iris-pickle/1", allow_pickle=True)
    assert model.pickled  # app.py reloads (and so refuses) it once allow_pickle is turned off
    assert model.predict(ROWS)[0] == [0, 1, 2]


def test_a_skops_file_cannot_trust_its_own_foreign_types(client: MlflowClient) -> None:
    """MLflow loads skops with the trusted types listed in the model's own MLmodel, which
    whoever logged it wrote; a replica trusts only scikit-learn, NumPy and SciPy."""
    custom = make_pipeline(FunctionTransformer(doubled), LogisticRegression(max_iter=500))
    register("iris-custom", "skops", custom.fit(X, Y), trusted=[f"{__name__}.doubled"])

    with pytest.raises(ModelLoadError) as refused:
        load_uri(client, "models:/iris-custom/1")
    assert str(refused.value) == (
        "variant 'a' (models:/iris-custom/1): its skops file holds types outside"
        f" scikit-learn/NumPy/SciPy: ['{__name__}.doubled']; loading them could run their"
        " code, so set allow_pickle: true in the user_config only if you trust its source"
    )

    model = load_uri(client, "models:/iris-custom/1", allow_pickle=True)
    assert model.pickled  # as trusted as a pickle: dropped when allow_pickle goes
    assert model.predict(ROWS)[0] == [0, 1, 2]


def test_mlflows_own_deserialization_switch_still_guards_pickles(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickles go through mlflow.sklearn, which honours MLFLOW_ALLOW_PICKLE_DESERIALIZATION
    (default true, and since MLflow 3.17 applied to skops too; MLflow 3.18 still honours it
    and names its successor, MLFLOW_ALLOW_MODEL_CODE_EXECUTION, in the refusal); skops
    files are read by raysplit itself, with its own type check, so they load either way."""
    register("iris", "skops")
    register("iris-pickle", "cloudpickle")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

    assert load_uri(client, "models:/iris/1").predict(ROWS)[0] == [0, 1, 2]
    switch = "MLFLOW_ALLOW_(PICKLE_DESERIALIZATION|MODEL_CODE_EXECUTION)"
    with pytest.raises(ModelLoadError, match=switch):
        load_uri(client, "models:/iris-pickle/1", allow_pickle=True)


def test_logged_model_and_run_uris_load(client: MlflowClient) -> None:
    info = register("iris", "skops")

    by_id = load_uri(client, info.model_uri)  # models:/m-<hex>
    assert (by_id.resolved.uri, by_id.resolved.name, by_id.resolved.version) == (
        info.model_uri,
        info.model_id,
        None,
    )
    by_run = load_uri(client, f"runs:/{info.run_id}/model")
    assert by_run.resolved.name == info.run_id
    assert by_run.predict(ROWS)[0] == by_id.predict(ROWS)[0] == [0, 1, 2]


@pytest.mark.parametrize(
    "source",
    ["s3://attacker/x", "file:///tmp/evil", "http://attacker.example/model"],
)
def test_a_version_whose_source_is_outside_mlflow_is_refused(
    client: MlflowClient, source: str
) -> None:
    register("iris", "skops")
    version = client.create_model_version("iris", source=source)  # the registry accepts it
    assert str(version.version) == "2"
    client.set_registered_model_alias("iris", "champion", "2")

    for uri in ("models:/iris/2", "models:/iris@champion"):
        with pytest.raises(ModelLoadError) as refused:
            resolve(uri, client)
        assert str(refused.value) == (
            f"{uri}: version 2 points at '{source}', {OUTSIDE}; raysplit loads only models"
            " logged through MLflow (models:/m-..., runs:/...)"
        )
    assert resolve("models:/iris/1", client).uri == "models:/iris/1"


def test_a_version_chained_through_a_model_named_like_a_logged_model_is_refused(
    client: MlflowClient,
) -> None:
    """A source 'models:/m-x/1' names version 1 of a registered model called 'm-x', and the
    registry stores that version's location (anywhere) as where to download from."""
    client.create_registered_model("m-0bad")
    client.create_model_version("m-0bad", source="file:///tmp/evil")
    register("iris", "skops")
    chained = client.create_model_version("iris", source="models:/m-0bad/1")
    assert client.get_model_version_download_uri("iris", chained.version) == "file:///tmp/evil"

    with pytest.raises(ModelLoadError, match=f"points at 'models:/m-0bad/1', {OUTSIDE}"):
        resolve(f"models:/iris/{chained.version}", client)


def test_an_unknown_version_is_a_load_error(client: MlflowClient) -> None:
    register("iris", "skops")
    with pytest.raises(ModelLoadError, match=r"^models:/iris/7: "):
        resolve("models:/iris/7", client)


@pytest.mark.parametrize(
    "uri",
    [
        "file:///tmp/model",
        "/tmp/model",
        "s3://b/m",
        "models://profile@host/iris/1",
        "models:/iris",  # latest: not pinned to a version or an alias
        "models:/iris/Production",
        "runs:/not-hex/model",
        "mlflow-artifacts:/0/abc/artifacts/model",
    ],
)
def test_a_model_uri_outside_the_registry_is_not_a_valid_variant(uri: str) -> None:
    with pytest.raises(ValidationError) as invalid:
        VariantConfig(name="a", model_uri=uri, weight=1)
    assert (
        f"model_uri '{uri}' is not models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
        in str(invalid.value)
    )


def test_predictions_match_the_model_as_logged(client: MlflowClient) -> None:
    """The model a replica loads from skops answers exactly as the one that was logged."""
    fitted = LogisticRegression(max_iter=500).fit(X, Y)
    register("iris", "skops", fitted)
    loaded = load_uri(client, "models:/iris/1")
    frame = pd.DataFrame(ROWS, columns=X.columns)
    assert loaded.predict(ROWS)[1] == fitted.predict_proba(frame).tolist()
