"""Held-out evaluation of the refitted best model: test metrics and one diagnostic figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures go to MLflow, never to a screen

import pandas as pd
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PredictionErrorDisplay,
    accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from tune.datasets import Task


def holdout_metrics(
    model: BaseEstimator, features: pd.DataFrame, target: pd.Series, task: Task
) -> dict[str, float]:
    """The test split's scores, named ``test_<metric>``."""
    predicted = model.predict(features)
    if task is Task.REGRESSION:
        return {
            "test_r2": float(r2_score(target, predicted)),
            "test_rmse": float(root_mean_squared_error(target, predicted)),
            "test_mae": float(mean_absolute_error(target, predicted)),
        }
    scores = {
        "test_accuracy": float(accuracy_score(target, predicted)),
        "test_f1_macro": float(f1_score(target, predicted, average="macro")),
    }
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(features)
        if proba.shape[1] == 2:
            scores["test_roc_auc"] = float(roc_auc_score(target, proba[:, 1]))
        else:
            scores["test_roc_auc"] = float(
                roc_auc_score(target, proba, multi_class="ovr", labels=model.classes_)
            )
    return scores


def diagnostic_figure(
    model: BaseEstimator, features: pd.DataFrame, target: pd.Series, task: Task
) -> tuple[str, Figure]:
    """``(file name, figure)``: a confusion matrix for classes, residuals for regression."""
    predicted = model.predict(features)
    if task is Task.REGRESSION:
        display = PredictionErrorDisplay.from_predictions(
            target, predicted, kind="residual_vs_predicted"
        )
        display.ax_.set_title("Residuals on the test split")
        return "residuals.png", display.figure_
    display = ConfusionMatrixDisplay.from_predictions(target, predicted, xticks_rotation=45)
    display.ax_.set_title("Confusion matrix on the test split")
    display.figure_.tight_layout()
    return "confusion_matrix.png", display.figure_
