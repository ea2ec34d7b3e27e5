"""The Tune trainable: cross-validate one candidate, reporting after every fold.

Reporting per fold makes each fold a Tune iteration, so ASHA can stop a poor candidate
after its first folds instead of paying for all of them. The trainable never talks to
MLflow: the driver logs trials (see ``tune.tracking``), so workers on other nodes need no
access to the tracking store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from ray import tune
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold

from tune.datasets import Task
from tune.families import FAMILIES
from tune.scoring import Metric
from tune.spaces import candidate_from_config, flatten_trial_config


@dataclass(frozen=True)
class TrialData:
    """What every trial shares, shipped once through Ray's object store."""

    features: pd.DataFrame
    target: pd.Series
    task: Task
    metric: Metric
    cv_folds: int
    seed: int

    def folds(self) -> list[tuple[np.ndarray, np.ndarray]]:
        splitter = (
            StratifiedKFold(self.cv_folds, shuffle=True, random_state=self.seed)
            if self.task is Task.CLASSIFICATION
            else KFold(self.cv_folds, shuffle=True, random_state=self.seed)
        )
        return list(splitter.split(self.features, self.target))


def cross_validate(config: dict[str, Any], data: TrialData) -> None:
    """Fit and score the candidate fold by fold; ``cv_mean`` is the search metric."""
    family, params = candidate_from_config(flatten_trial_config(config))
    estimator = FAMILIES[(data.task, family)].build(params, seed=data.seed)
    scores: list[float] = []
    fit_time = 0.0
    for fold, (train_idx, valid_idx) in enumerate(data.folds()):
        started = time.perf_counter()
        model = clone(estimator).fit(data.features.iloc[train_idx], data.target.iloc[train_idx])
        fit_time += time.perf_counter() - started
        scores.append(
            data.metric.score(model, data.features.iloc[valid_idx], data.target.iloc[valid_idx])
        )
        tune.report(
            {
                "fold": fold,
                "fold_score": scores[-1],
                "cv_mean": float(np.mean(scores)),
                "cv_std": float(np.std(scores)),
                "folds_done": len(scores),
                "fit_time_s": fit_time,
            }
        )
