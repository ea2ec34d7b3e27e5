"""MLflow at the edge: connect, pick the experiment, and log every Tune trial as a child run.

Trials are logged from the driver through a Tune callback, not from inside the trainable,
so worker nodes need no route to the tracking store (an embedded SQLite file lives on the
head only) and a trial stopped by ASHA still gets a terminal status and its partial folds.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import requests
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from ray.tune.experiment import Trial

from raysplit.core.errors import RaysplitError
from raysplit.core.settings import Locations
from tune.spaces import candidate_from_config, flatten_trial_config

PARENT_TAG = "mlflow.parentRunId"


def connect(locations: Locations) -> MlflowClient:
    """Point MLflow at the resolved store and prove it answers before anything is written."""
    uri = locations.mlflow_tracking_uri
    if locations.mlflow_embedded:
        locations.home.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            reason = type(exc).__name__
            raise RaysplitError(
                f"MLflow tracking server {uri} is unreachable ({reason});"
                " start it, or unset MLFLOW_TRACKING_URI to use the embedded store"
            ) from exc
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(locations.mlflow_registry_uri)
    # Ray workers and subprocesses resolve the same store
    os.environ["MLFLOW_TRACKING_URI"] = uri
    client = MlflowClient(uri, locations.mlflow_registry_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # any store error means we cannot track: say which and stop
        raise RaysplitError(f"MLflow tracking store {uri} is not usable: {exc}") from exc
    return client


def ensure_experiment(client: MlflowClient, name: str, locations: Locations) -> str:
    """The experiment's id, created with an absolute artifact root for the embedded store."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{locations.mlflow_artifact_root}/{name}" if locations.mlflow_embedded else None
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise RaysplitError(
            f"MLflow experiment '{name}' is deleted; restore it or choose another 'experiment'"
        )
    return experiment.experiment_id


class TrialLogger(Callback):
    """One child run per trial: the family's parameters, each fold's score, the CV summary."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, folds: int):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.folds = folds
        self.run_ids: dict[str, str] = {}
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with its state
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        family, params = candidate_from_config(flatten_trial_config(trial.config))
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{family}-{trial.trial_id}",
            tags={
                PARENT_TAG: self.parent_run_id,
                "raysplit.trial_id": trial.trial_id,
                "raysplit.family": family,
            },
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        self.client.log_batch(
            run.info.run_id,
            params=[
                mlflow.entities.Param(k, str(v)) for k, v in {"family": family, **params}.items()
            ],
        )

    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info
    ):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None and "fold_score" in result:
            self.client.log_metric(run_id, "fold_score", result["fold_score"], step=result["fold"])

    def _finish(self, trial: Trial, status: RunStatus) -> None:
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is None:
            return
        last = trial.last_result or {}
        summary = {k: float(last[k]) for k in ("cv_mean", "cv_std", "fit_time_s") if k in last}
        summary["folds_done"] = float(last.get("folds_done", 0))
        self.client.log_batch(
            run_id,
            metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in summary.items()],
            tags=[
                mlflow.entities.RunTag(
                    "raysplit.early_stopped", str(summary["folds_done"] < self.folds).lower()
                )
            ],
        )
        self.client.set_terminated(run_id, RunStatus.to_string(status))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._finish(trial, RunStatus.FINISHED)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._finish(trial, RunStatus.FAILED)
