"""Search metrics: which scikit-learn scorer each one is, which way is better, which task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.metrics import get_scorer

from tune.datasets import Task


@dataclass(frozen=True)
class Metric:
    """A search metric, reported in its natural units (RMSE positive, lower is better)."""

    name: str
    task: Task
    scorer: str
    mode: Literal["max", "min"]

    def score(self, estimator: BaseEstimator, features: pd.DataFrame, target: pd.Series) -> float:
        scorer = self.scorer
        if self.name == "roc_auc" and target.nunique() > 2:
            scorer = "roc_auc_ovr"
        value = float(get_scorer(scorer)(estimator, features, target))
        return -value if self.scorer.startswith("neg_") else value


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", Task.CLASSIFICATION, "accuracy", "max"),
        Metric("f1_macro", Task.CLASSIFICATION, "f1_macro", "max"),
        Metric("roc_auc", Task.CLASSIFICATION, "roc_auc", "max"),
        Metric("r2", Task.REGRESSION, "r2", "max"),
        Metric("rmse", Task.REGRESSION, "neg_root_mean_squared_error", "min"),
    )
}

DEFAULT_METRIC = {Task.CLASSIFICATION: "accuracy", Task.REGRESSION: "r2"}
