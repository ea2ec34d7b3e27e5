"""Stacked model calls answer exactly what one call per request would, and a request that
breaks the model fails alone."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.linear_model import Ridge, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from serve_app.predict.batching import PredictionJob, run_jobs
from serve_app.predict.models import ARGMAX_OF_PROBA, LoadedModel, ResolvedUri, final_estimator
from tune.datasets import Task
from tune.families import FAMILIES


def _loaded(estimator, name: str = "m") -> LoadedModel:
    classes = getattr(estimator, "classes_", None)
    return LoadedModel(
        resolved=ResolvedUri(f"models:/{name}/1", name, "1"),
        estimator=estimator,
        features=["a", "b", "c", "d"],
        classes=None if classes is None else classes.tolist(),
    )


IRIS = load_iris()
CLASSIFIER_PARAMS = [
    ("logistic_regression", {"C": 0.05}),
    ("random_forest", {"n_estimators": 30, "max_depth": 3}),
    ("hist_gradient_boosting", {"max_iter": 30}),
    ("svc", {"C": 1.0, "gamma": 0.1}),
    ("knn", {"n_neighbors": 4, "weights": "uniform"}),  # even k: ties happen
    ("knn", {"n_neighbors": 6, "weights": "distance"}),
]


@pytest.mark.parametrize("loader", [load_iris, load_wine, load_breast_cancer])
@pytest.mark.parametrize(("family", "params"), CLASSIFIER_PARAMS)
def test_every_classifier_family_predicts_the_argmax_of_its_probabilities(loader, family, params):
    """The one-pass shortcut is only taken where it cannot change an answer: checked on
    training rows, unseen noisy rows and exact duplicates (distance ties)."""
    data = loader()
    estimator = FAMILIES[(Task.CLASSIFICATION, family)].build(params, seed=0)
    estimator.fit(data.data, data.target)
    assert type(final_estimator(estimator)).__name__ in ARGMAX_OF_PROBA
    rng = np.random.default_rng(0)
    rows = np.vstack([data.data, data.data * rng.normal(1.0, 0.3, data.data.shape)])
    predictions, _ = _loaded(estimator).predict(rows)
    assert predictions == estimator.predict(rows).tolist()


def test_an_estimator_outside_the_allowlist_keeps_its_own_predict():
    estimator = SGDClassifier(loss="log_loss", random_state=0).fit(IRIS.data, IRIS.target)
    model = _loaded(estimator)
    assert type(estimator).__name__ not in ARGMAX_OF_PROBA
    predictions, probabilities = model.predict(IRIS.data)
    assert predictions == estimator.predict(IRIS.data).tolist()
    assert np.allclose(probabilities, estimator.predict_proba(IRIS.data))


def _fit(family: str, params: dict) -> LoadedModel:
    estimator = FAMILIES[(Task.CLASSIFICATION, family)].build(params, seed=0)
    return _loaded(estimator.fit(IRIS.data, IRIS.target), family)


def test_stacked_jobs_get_what_separate_calls_would_give():
    champion = _fit("svc", {"C": 1.0, "gamma": 0.1})
    challenger = _fit("knn", {"n_neighbors": 5})
    jobs = [
        PredictionJob(champion if i % 3 else challenger, IRIS.data[i : i + 1 + i % 4])
        for i in range(40)
    ]
    results = run_jobs(jobs)
    assert len(results) == len(jobs)
    for job, result in zip(jobs, results, strict=True):
        predictions, probabilities = job.model.predict(job.rows)
        assert result.error is None
        assert result.output[0] == predictions
        assert np.allclose(result.output[1], probabilities)
        assert len(result.output[0]) == len(job.rows)
        assert result.latency_ms > 0


def _reject_negative(x: np.ndarray) -> np.ndarray:
    if (x < 0).any():
        raise ValueError("negative measurement")
    return x


def test_a_request_that_breaks_the_model_fails_alone():
    fragile = make_pipeline(
        FunctionTransformer(_reject_negative), SGDClassifier(loss="log_loss", random_state=0)
    ).fit(IRIS.data, IRIS.target)
    model = _loaded(fragile)
    bad = -IRIS.data[:1]
    jobs = [PredictionJob(model, IRIS.data[i : i + 1]) for i in range(5)]
    jobs.insert(2, PredictionJob(model, bad))
    results = run_jobs(jobs)
    assert [r.error is None for r in results] == [True, True, False, True, True, True]
    assert "negative measurement" in str(results[2].error)
    assert results[2].output is None and results[2].latency_ms > 0  # the failed call's time
    assert results[0].output[0] == fragile.predict(IRIS.data[:1]).tolist()


def test_a_regressor_has_no_probabilities():
    model = _loaded(Ridge().fit(IRIS.data, IRIS.target.astype(float)))
    (result,) = run_jobs([PredictionJob(model, IRIS.data[:3])])
    assert result.output[1] is None
    assert len(result.output[0]) == 3
