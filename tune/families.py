"""Model families a search can try, each with its estimator and a default search space.

A family that is sensitive to feature scale is wrapped in a ``StandardScaler`` pipeline, so
search-space parameters always name the estimator's own arguments (``C``, not ``model__C``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tune.datasets import Task


@dataclass(frozen=True)
class Family:
    name: str
    task: Task
    estimator: Callable[[], BaseEstimator]
    scaled: bool
    default_space: dict[str, Any] = field(default_factory=dict)
    # wrap in Platt scaling for predict_proba (SVC's own `probability=True` is deprecated)
    calibrated: bool = False

    def parameter_names(self) -> set[str]:
        return set(self.estimator().get_params(deep=False))

    def build(self, params: dict[str, Any], seed: int | None = None) -> BaseEstimator:
        """An unfitted estimator with ``params`` (and ``seed`` where it takes one)."""
        estimator = self.estimator()
        if seed is not None and "random_state" in estimator.get_params(deep=False):
            estimator.set_params(random_state=seed)
        estimator.set_params(**params)
        if self.calibrated:
            estimator = CalibratedClassifierCV(estimator, method="sigmoid", cv=3, ensemble=False)
        if self.scaled:
            return Pipeline([("scale", StandardScaler()), ("model", estimator)])
        return estimator


_FOREST_SPACE = {
    "n_estimators": {"randint": [50, 300]},
    "max_depth": {"choice": [None, 4, 8, 16]},
    "min_samples_leaf": {"randint": [1, 5]},
    "max_features": {"choice": ["sqrt", 0.5, 1.0]},
}
_HGB_SPACE = {
    "learning_rate": {"loguniform": [0.01, 0.3]},
    "max_iter": {"randint": [50, 300]},
    "max_leaf_nodes": {"randint": [8, 64]},
    "l2_regularization": {"loguniform": [1e-6, 1.0]},
}

FAMILIES: dict[tuple[Task, str], Family] = {
    (f.task, f.name): f
    for f in (
        Family(
            "logistic_regression",
            Task.CLASSIFICATION,
            lambda: LogisticRegression(max_iter=5000),
            scaled=True,
            default_space={"C": {"loguniform": [0.01, 10.0]}},
        ),
        Family(
            "random_forest",
            Task.CLASSIFICATION,
            lambda: RandomForestClassifier(n_jobs=1),
            scaled=False,
            default_space=_FOREST_SPACE,
        ),
        Family(
            "hist_gradient_boosting",
            Task.CLASSIFICATION,
            HistGradientBoostingClassifier,
            scaled=False,
            default_space=_HGB_SPACE,
        ),
        Family(
            "svc",
            Task.CLASSIFICATION,
            SVC,
            scaled=True,
            calibrated=True,
            default_space={
                "C": {"loguniform": [0.01, 100.0]},
                "gamma": {"loguniform": [1e-4, 1.0]},
            },
        ),
        Family(
            "knn",
            Task.CLASSIFICATION,
            KNeighborsClassifier,
            scaled=True,
            default_space={
                "n_neighbors": {"randint": [1, 31]},
                "weights": {"choice": ["uniform", "distance"]},
            },
        ),
        Family(
            "ridge",
            Task.REGRESSION,
            Ridge,
            scaled=True,
            default_space={"alpha": {"loguniform": [1e-3, 100.0]}},
        ),
        Family(
            "random_forest",
            Task.REGRESSION,
            lambda: RandomForestRegressor(n_jobs=1),
            scaled=False,
            default_space=_FOREST_SPACE,
        ),
        Family(
            "hist_gradient_boosting",
            Task.REGRESSION,
            HistGradientBoostingRegressor,
            scaled=False,
            default_space=_HGB_SPACE,
        ),
    )
}

FAMILY_NAMES: list[str] = sorted({name for _, name in FAMILIES})


def families_for(task: Task) -> list[str]:
    return [name for (t, name) in FAMILIES if t is task]
