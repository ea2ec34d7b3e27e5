"""Scoring the versions a retrained model must beat, on the retrain's own test split.

The incumbents are loaded with the same rule serving uses (:mod:`raysplit.core.model_files`:
skops with scikit-learn/NumPy/SciPy types only, no pickles), so a retrain job never
unpickles a file the ingress would refuse.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
import pandas as pd
from mlflow.tracking import MlflowClient

from raysplit.core.model_files import read_model
from raysplit.core.registry import ROLLED_BACK_TAG, current_holder
from tune.datasets import Task
from tune.evaluation import holdout_metrics
from tune.retraining.gate import IncumbentScore


def score_incumbent(
    client: MlflowClient,
    model_name: str,
    alias: str,
    features: pd.DataFrame,
    target: pd.Series,
    task: Task,
    metric: str,
) -> IncumbentScore:
    """``alias``'s version scored with ``metric`` on ``features``/``target``, or why not."""
    version = current_holder(client, model_name, alias)
    if version is None:
        return IncumbentScore(alias=alias)
    rolled_back = client.get_model_version(model_name, version).tags.get(ROLLED_BACK_TAG)
    if rolled_back is not None:
        why = f"a rollout rolled it back ({rolled_back[:200]})"
        return IncumbentScore(alias=alias, version=version, skipped=why)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}"))
        estimator = read_model(local).estimator
        score = holdout_metrics(estimator, features, target, task)[f"test_{metric}"]
    except Exception as exc:  # an unsafe or corrupt file, a different feature set...
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return IncumbentScore(alias=alias, version=version, error=f"{type(exc).__name__}: {first}")
    return IncumbentScore(alias=alias, version=version, score=float(score))
