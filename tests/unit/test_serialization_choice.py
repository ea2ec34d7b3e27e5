"""`raysplit tune` logs skops where skops round-trips the model, else cloudpickle."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import skops.io
from sklearn.base import BaseEstimator
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from raysplit.core import trust
from tune.model_logging import choose_serialization


def doubled(x):
    """A custom transform: skops stores it by name, as a type outside scikit-learn."""
    return x * 2


@pytest.fixture(scope="module")
def iris():
    return load_iris(return_X_y=True, as_frame=True)


@pytest.mark.parametrize(
    "estimator",
    [
        LogisticRegression(max_iter=500),
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        HistGradientBoostingClassifier(max_iter=20, random_state=0),
        KNeighborsClassifier(n_neighbors=5),
        make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=500)),
    ],
    ids=["logistic", "scaled-pipeline", "hist-gradient-boosting", "knn", "numpy-function"],
)
def test_sklearn_models_are_logged_with_skops(iris, estimator, caplog) -> None:
    x, y = iris
    model = estimator.fit(x, y)
    with caplog.at_level(logging.WARNING, logger="tune.model_logging"):
        serialization, trusted = choose_serialization(model, x)
    assert serialization == "skops"
    assert trusted is not None
    assert all(t.startswith(("sklearn.", "numpy.", "scipy.")) for t in trusted)
    # exactly what the file needs: it loads with these and nothing more
    assert sorted(trusted) == sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    # its own logger only: a Ray Data thread left by an earlier test in this worker logs
    # DEBUG lines of its own (seen in a full make test run)
    assert not [r for r in caplog.records if r.name == "tune.model_logging"]


def test_a_custom_function_falls_back_to_cloudpickle_with_a_warning(iris, caplog) -> None:
    x, y = iris
    model = make_pipeline(FunctionTransformer(doubled), LogisticRegression(max_iter=500)).fit(x, y)
    with caplog.at_level(logging.WARNING, logger="tune.model_logging"):
        assert choose_serialization(model, x) == ("cloudpickle", None)
    [record] = caplog.records
    message = record.getMessage()
    assert f"{__name__}.doubled" in message
    assert "outside scikit-learn/NumPy/SciPy" in message
    assert "allow_pickle: true" in message


class Forgetful(BaseEstimator):
    """Loses its fitted offset in a skops round trip, so predicts differently afterwards."""

    def fit(self, x, y):
        self.offset_ = 1
        return self

    def predict(self, x):
        return np.full(len(x), getattr(self, "offset_", 0))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "offset_"}


def test_a_model_that_predicts_differently_after_skops_falls_back(
    iris, caplog, monkeypatch
) -> None:
    x, y = iris
    model = Forgetful().fit(x, y)
    # pretend the class is trusted, so only the prediction check can catch it
    monkeypatch.setattr(trust, "TRUSTED_MODULES", (*trust.TRUSTED_MODULES, __name__))
    with caplog.at_level(logging.WARNING, logger="tune.model_logging"):
        assert choose_serialization(model, x) == ("cloudpickle", None)
    assert "predicts differently" in caplog.records[0].getMessage()


def test_a_model_skops_cannot_load_back_falls_back(iris, caplog, monkeypatch) -> None:
    x, y = iris

    class Local(LogisticRegression):  # skops stores it by a name it cannot import back
        pass

    model = Local(max_iter=500).fit(x, y)
    monkeypatch.setattr(trust, "TRUSTED_MODULES", (*trust.TRUSTED_MODULES, __name__))
    with caplog.at_level(logging.WARNING, logger="tune.model_logging"):
        assert choose_serialization(model, x) == ("cloudpickle", None)
    assert "because skops failed: " in caplog.records[0].getMessage()
