"""`raysplit report --mlflow`: the experiment's report as an MLflow run, beside the models.

The run holds a metric per variant and comparison, the verdicts as tags and the report
JSON as an artifact; each registered model version the report compared gets a tag naming
the run, so whoever opens the version in the registry finds the evidence about it.
"""

from __future__ import annotations

import time
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from raysplit.core.settings import Locations
from serve_app.report.experiment import ExperimentReport
from tune.tracking import connect, ensure_experiment

REPORTS_EXPERIMENT = "raysplit-reports"
VERSION_TAG = "raysplit.report_run"


def _metrics(report: ExperimentReport) -> dict[str, float]:
    found: dict[str, float] = {"requests": report.requests, "errors": report.errors}
    if report.srm_p_value is not None:
        found["srm_p_value"] = report.srm_p_value
    for v in report.variants:
        found[f"{v.name}.assigned"] = v.assigned
        found[f"{v.name}.errors"] = v.errors
        found[f"{v.name}.forced"] = v.forced
        for name, interval in (("accuracy", v.accuracy), ("mae", v.mae)):
            if interval is not None:
                found[f"{v.name}.{name}"] = interval.estimate
        if v.label_coverage is not None:
            found[f"{v.name}.label_coverage"] = v.label_coverage
    for c in report.comparisons + report.guardrails:
        prefix = f"{c.challenger}.vs.{c.control}.{c.metric.value}"
        if c.difference is not None:
            found[f"{prefix}.difference"] = c.difference.estimate
        for name in ("p_value", "always_valid_p_value", "adjusted_always_valid_p_value"):
            value = getattr(c, name)
            if value is not None:
                found[f"{prefix}.{name}"] = value
    for s in report.shadows:
        if s.difference is not None:
            found[f"{s.shadow}.paired.{s.metric.value}.difference"] = s.difference.estimate
    return found


def log_report(
    report: ExperimentReport, serving: dict[str, Any], locations: Locations | None = None
) -> str:
    """Log ``report`` as a run; ``serving`` is ``GET /models`` (variant -> model version),
    used to tag the versions when the report is of the experiment served now."""
    client: MlflowClient = connect(locations or Locations.resolve())
    experiment_id = ensure_experiment(client, REPORTS_EXPERIMENT, locations or Locations.resolve())
    versions = {}
    if serving.get("experiment") == report.experiment:
        versions = {v["name"]: v["model"] for v in serving.get("variants", [])}
    tags = {"raysplit.experiment": report.experiment, "raysplit.task": report.task}
    for name, model in versions.items():
        tags[f"raysplit.model.{name}"] = f"{model['name']}/{model['version']}"
    for c in report.comparisons:
        tags[f"raysplit.verdict.{c.challenger}"] = c.verdict.value
    for s in report.shadows:
        tags[f"raysplit.verdict.{s.shadow}"] = s.verdict.value
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"{report.experiment} {stamp}", tags=tags
    ) as run:
        mlflow.log_metrics({k.replace(" ", "_"): float(v) for k, v in _metrics(report).items()})
        mlflow.log_dict(report.model_dump(mode="json"), "report.json")
    for model in versions.values():
        if model.get("version"):
            client.set_model_version_tag(
                model["name"], str(model["version"]), VERSION_TAG, run.info.run_id
            )
    return run.info.run_id
