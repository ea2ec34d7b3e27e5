"""One search, end to end: validate, tune on Ray, log to MLflow, refit, register.

Order matters for "nothing left behind": every input is validated and the tracking store
is proven reachable before Ray starts or a run is created; the model is registered only
after it has been refitted, evaluated and logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import mlflow
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experimental.output import AirVerbosity, TuneTerminalReporter
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raysplit.core.errors import RaysplitError
from raysplit.core.onnx_check import OnnxCheck
from raysplit.core.settings import Locations
from tune.config import SearchPlan, TuneSpec, resolve_plan
from tune.datasets import Dataset, Split, load_dataset, split_dataset
from tune.model_logging import log_best_model, log_inputs, onnx_tags
from tune.registry import register_version
from tune.retraining.event_rows import EventSourceSummary, load_event_split
from tune.retraining.gate import GateDecision, decide_gate
from tune.retraining.incumbents import score_incumbent
from tune.spaces import candidate_from_config, flatten_trial_config, search_setup, trial_name
from tune.tracking import TrialLogger, connect, ensure_experiment
from tune.trainable import TrialData, cross_validate

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOutcome:
    experiment_id: str
    parent_run_id: str
    trials: int
    completed_trials: int
    early_stopped_trials: int
    metric: str
    best_family: str
    best_params: dict[str, Any]
    best_cv_score: float
    test_scores: dict[str, float]
    model_name: str
    model_version: str
    alias: str | None
    search_seconds: float  # the Tune run alone, without set-up, refit and registration
    folds_fitted: int  # over every trial; what early stopping saves shows here
    onnx: str = ""  # the ONNX verdict's reason, prefixed with verified/not verified
    gate: GateDecision | None = None  # register.gate's verdict; alias None when it said no
    events: dict[str, str] = field(default_factory=dict)  # the event-store source, if any
    features: list[str] = field(default_factory=list)  # as requests must name them
    renamed: dict[str, str] = field(default_factory=dict)  # source column -> served name


@dataclass(frozen=True)
class TrialSummary:
    family: str
    params: dict[str, Any]
    cv_mean: float
    folds_done: int


def _trial_summaries(results: tune.ResultGrid) -> tuple[list[TrialSummary], list[str]]:
    summaries, errors = [], []
    for result in results:
        if result.error is not None:
            errors.append(str(result.error).strip().splitlines()[-1])
            continue
        metrics = result.metrics or {}
        if "cv_mean" not in metrics:
            continue
        family, params = candidate_from_config(flatten_trial_config(result.config))
        summaries.append(
            TrialSummary(family, params, float(metrics["cv_mean"]), int(metrics["folds_done"]))
        )
    return summaries, errors


def _best(summaries: list[TrialSummary], folds: int, mode: str) -> TrialSummary:
    complete = [s for s in summaries if s.folds_done == folds]
    pick = max if mode == "max" else min
    return pick(complete, key=lambda s: s.cv_mean)


class _ProgressTable(TuneTerminalReporter):
    """Tune's progress table (every 30 s and at the end) without a config box and a result
    box per trial: the trials are in MLflow, and two small searches printed ~800 lines.

    Ray 2.60 has no setting for this: at verbosity 1 its reporter prints both boxes for
    every trial. So Tune runs at verbosity 0 (its own reporter stays silent, except for
    trial errors, which it always prints) and this reporter, passed first among the
    callbacks, is the one Tune uses for the experiment header and the table. The base class
    lives in ``ray.tune.experimental.output`` (Ray's output engine; pyproject pins 2.60).
    """

    _start_end_verbosity = AirVerbosity.VERBOSE  # per-trial boxes only at verbosity 2

    def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
        """Printed by Tune's own (silent) reporter already."""

    on_trial_recover = on_trial_error


def _run_trials(
    spec: TuneSpec, plan: SearchPlan, split: Split, logger: TrialLogger, locations: Locations
) -> tune.ResultGrid:
    search = spec.search
    param_space, search_alg, num_samples = search_setup(
        plan, search.algorithm, search.num_samples, search.max_concurrent_trials, search.seed
    )
    data = TrialData(
        split.x_train, split.y_train, plan.task, plan.metric, search.cv_folds, search.seed
    )
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=search.cv_folds,
            grace_period=min(2, search.cv_folds),
            reduction_factor=2,
        )
        if search.early_stopping == "asha"
        else FIFOScheduler()
    )
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(cross_validate, data=data), {"cpu": search.cpus_per_trial}
        ),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="cv_mean",
            mode=plan.metric.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            reuse_actors=True,
            trial_name_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"{logger.parent_run_id}",
            storage_path=str(locations.tune_storage_path),
            callbacks=[
                _ProgressTable(AirVerbosity.DEFAULT, metric="cv_mean", mode=plan.metric.mode),
                logger,
            ],
            verbose=0,
        ),
    )
    return tuner.fit()


def _data(
    spec: TuneSpec, locations: Locations
) -> tuple[Dataset, SearchPlan, Split, EventSourceSummary | None]:
    """The dataset, the plan for its task and the split: random and stratified for a
    dataset, by time for event rows (the newest are the test split)."""
    if spec.dataset.events is not None:
        dataset, split, events = load_event_split(
            spec.dataset,
            locations,
            cv_folds=spec.search.cv_folds,
            model_name=spec.registration.model_name,
        )
        return dataset, resolve_plan(spec.search, dataset.task), split, events
    dataset = load_dataset(
        spec.dataset.name, spec.dataset.path, spec.dataset.target, spec.dataset.task
    )
    plan = resolve_plan(spec.search, dataset.task)
    split = split_dataset(dataset, spec.dataset.test_size, spec.dataset.seed, spec.search.cv_folds)
    return dataset, plan, split, None


def gate_tags(gate: GateDecision) -> dict[str, str]:
    """The gate's verdict on the version (and the search run), with the figures it used."""
    return {
        "raysplit.gate": "promoted" if gate.promote else "not_promoted",
        "raysplit.gate_reason": gate.reason[:500],
        "raysplit.gate_figures": gate.model_dump_json(include={"score", "margin", "incumbents"})[
            :5000
        ],
    }


def _gate(
    client: MlflowClient,
    spec: TuneSpec,
    plan: SearchPlan,
    split: Split,
    model_name: str,
    scores: dict[str, float],
) -> GateDecision | None:
    """``register.gate``'s verdict: the new version against each incumbent alias's version,
    all scored on this search's test split (for events: the newest slice)."""
    gate = spec.registration.gate
    if gate is None:
        return None
    metric = plan.metric.name
    incumbents = [
        score_incumbent(client, model_name, alias, split.x_test, split.y_test, plan.task, metric)
        for alias in gate.against
    ]
    decision = decide_gate(metric, plan.metric.mode, scores[f"test_{metric}"], incumbents, gate)
    _log.info("retrain gate: %s", decision.reason)
    return decision


@dataclass(frozen=True)
class _Inputs:
    """What a search runs on, read and validated before Ray starts or a run is created."""

    dataset: Dataset
    plan: SearchPlan
    split: Split
    events: EventSourceSummary | None
    data_name: str  # the MLflow input's and the tags' name for the rows
    model_name: str
    source_tags: dict[str, str]  # the event-store source's, or none


@dataclass(frozen=True)
class _Trials:
    """The Tune run, summarised: what the parent run records and the outcome reports."""

    count: int  # every trial, failed ones included
    summaries: list[TrialSummary]
    errors: list[str]
    complete: list[TrialSummary]  # ran every fold: ASHA stopped none of them
    best: TrialSummary
    search_seconds: float


@dataclass(frozen=True)
class _Registered:
    """The refitted best model as registered, and the verdicts that decided its alias."""

    scores: dict[str, float]
    onnx_check: OnnxCheck
    gate: GateDecision | None
    alias: str | None
    version: str


def _prepare(spec: TuneSpec, locations: Locations) -> _Inputs:
    """Read and split the data first, so a bad dataset fails before anything is started."""
    dataset, plan, split, events = _data(spec, locations)
    return _Inputs(
        dataset=dataset,
        plan=plan,
        split=split,
        events=events,
        data_name=events.input_name if events is not None else dataset.name,
        model_name=spec.registration.model_name or dataset.name,
        source_tags=events.tags() if events is not None else {},
    )


def _log_search_inputs(spec: TuneSpec, inputs: _Inputs) -> dict[str, str]:
    """The parent run's parameters, tags and dataset inputs; the digests, which the
    registered version carries too."""
    plan, split = inputs.plan, inputs.split
    mlflow.log_params(
        {
            "dataset": inputs.data_name,
            "task": str(inputs.dataset.task),
            "metric": plan.metric.name,
            "families": ",".join(plan.spaces),
            **spec.search.model_dump(exclude={"families", "metric"}),
            "test_size": spec.dataset.test_size,
            "train_rows": len(split.x_train),
            "test_rows": len(split.x_test),
        }
    )
    mlflow.set_tags({"raysplit.kind": "search", **inputs.source_tags})
    return log_inputs(split, inputs.data_name, inputs.events)


def _search(spec: TuneSpec, inputs: _Inputs, logger: TrialLogger, locations: Locations) -> _Trials:
    """Run the trials and pick the best complete one. No complete trial is an error that
    quotes the first trial error: there is nothing to refit or register."""
    search_started = time.perf_counter()
    results = _run_trials(spec, inputs.plan, inputs.split, logger, locations)
    search_seconds = time.perf_counter() - search_started
    summaries, errors = _trial_summaries(results)
    complete = [s for s in summaries if s.folds_done == spec.search.cv_folds]
    if not complete:
        reason = errors[0] if errors else "no trial reported a score"
        raise RaysplitError(f"all {len(results)} trials failed; first error: {reason}")
    best = _best(summaries, spec.search.cv_folds, inputs.plan.metric.mode)
    return _Trials(len(results), summaries, errors, complete, best, search_seconds)


def _log_search_result(trials: _Trials, plan: SearchPlan) -> None:
    """The best trial and the trial counts on the parent run."""
    best = trials.best
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    mlflow.log_param("best.family", best.family)
    mlflow.log_metrics(
        {
            f"best_cv_{plan.metric.name}": best.cv_mean,
            "trials": trials.count,
            "trials_early_stopped": len(trials.summaries) - len(trials.complete),
            "trials_failed": len(trials.errors),
        }
    )


def _register(
    client: MlflowClient,
    spec: TuneSpec,
    inputs: _Inputs,
    parent: str,
    best: TrialSummary,
    digests: dict[str, str],
) -> _Registered:
    """Refit, evaluate and log the best model, then register it; the alias moves only if
    ``register.gate`` (when set) says the new version beats the incumbents."""
    plan = inputs.plan
    model_info, scores, onnx_check = log_best_model(
        spec, plan, inputs.split, best.family, best.params, digests
    )
    tags = {
        "raysplit.search_run_id": parent,
        "raysplit.metric": plan.metric.name,
        "raysplit.cv_score": f"{best.cv_mean:.6f}",
        "raysplit.test_score": f"{scores['test_' + plan.metric.name]:.6f}",
        "raysplit.family": best.family,
        "raysplit.task": str(inputs.dataset.task),
        "raysplit.dataset": inputs.data_name,
        "raysplit.dataset_digest": digests["dataset_digest_training"],
        "raysplit.serialization_format": model_info.metadata["serialization_format"],
        **onnx_tags(onnx_check),
        **inputs.source_tags,
    }
    gate = _gate(client, spec, plan, inputs.split, inputs.model_name, scores)
    alias = spec.registration.alias if gate is None or gate.promote else None
    if gate is not None:
        verdict = gate_tags(gate)
        tags.update(verdict)
        mlflow.set_tags(verdict)
    version = register_version(
        client,
        inputs.model_name,
        model_info.model_uri,
        parent,
        tags,
        alias,
        model_id=model_info.model_id,
    )
    mlflow.set_tag("raysplit.registered_version", f"{inputs.model_name}/{version.version}")
    return _Registered(scores, onnx_check, gate, alias, str(version.version))


@dataclass(frozen=True)
class RayTarget:
    """Where a search's Ray runs: ``address`` to join, or None to start a local one."""

    address: str | None
    line: str  # what the search prints, once Ray is up


def ray_target(env_address: str | None, cluster_address: str | None) -> RayTarget:
    """Join the running raysplit cluster rather than start a second Ray beside it.

    A second Ray instance on the same cores (each with its own object store, dashboard
    and GCS) competes with the serving replicas for every CPU; joining the cluster
    `raysplit up` started schedules the trials beside them instead. An explicit
    ``RAY_ADDRESS`` wins, as it does for Ray's own tools; without either, a local instance
    as before.
    """
    if env_address:
        return RayTarget(env_address, f"Ray: joined RAY_ADDRESS={env_address}")
    if cluster_address:
        return RayTarget(cluster_address, f"Ray: joined the raysplit cluster at {cluster_address}")
    return RayTarget(
        None,
        "Ray: started a local instance (no raysplit cluster is running: raysplit up starts one)",
    )


def run_search(
    spec: TuneSpec, locations: Locations, cluster_address: str | None = None
) -> SearchOutcome:
    """Validate everything, then search, log, refit and register; see the module docstring.

    ``cluster_address``: the running raysplit cluster's, which the search joins (see
    :func:`ray_target`); the command line finds it, training cannot read the CLI's state.
    """
    inputs = _prepare(spec, locations)
    client = connect(locations)
    experiment_id = ensure_experiment(
        client, spec.experiment or f"raysplit-{inputs.model_name}", locations
    )

    started_ray = not ray.is_initialized()
    if started_ray:
        target = ray_target(os.environ.get("RAY_ADDRESS"), cluster_address)
        ray.init(address=target.address, log_to_driver=False, configure_logging=False)
        print(target.line, flush=True)
    try:
        run_name = f"search-{inputs.model_name}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            parent = run.info.run_id
            digests = _log_search_inputs(spec, inputs)
            logger = TrialLogger(
                locations.mlflow_tracking_uri, experiment_id, parent, spec.search.cv_folds
            )
            trials = _search(spec, inputs, logger, locations)
            _log_search_result(trials, inputs.plan)
            registered = _register(client, spec, inputs, parent, trials.best, digests)
    finally:
        if started_ray:
            ray.shutdown()
    return _outcome(experiment_id, parent, inputs, trials, registered)


def _outcome(
    experiment_id: str, parent: str, inputs: _Inputs, trials: _Trials, registered: _Registered
) -> SearchOutcome:
    """What :func:`run_search` reports, from what its phases returned."""
    best = trials.best
    onnx_check = registered.onnx_check
    return SearchOutcome(
        experiment_id=experiment_id,
        parent_run_id=parent,
        trials=trials.count,
        completed_trials=len(trials.complete),
        early_stopped_trials=len(trials.summaries) - len(trials.complete),
        metric=inputs.plan.metric.name,
        best_family=best.family,
        best_params=best.params,
        best_cv_score=best.cv_mean,
        test_scores=registered.scores,
        model_name=inputs.model_name,
        model_version=registered.version,
        alias=registered.alias,
        search_seconds=trials.search_seconds,
        folds_fitted=sum(s.folds_done for s in trials.summaries),
        onnx=("verified: " if onnx_check.verified else "not verified: ") + onnx_check.reason,
        gate=registered.gate,
        events=inputs.events.tags() if inputs.events is not None else {},
        features=list(inputs.dataset.features.columns),
        renamed=inputs.dataset.renamed,
    )


def outcome_lines(outcome: SearchOutcome) -> list[str]:
    """What the CLI prints after a search."""
    return [
        f"trials: {outcome.trials} ({outcome.completed_trials} complete,"
        f" {outcome.early_stopped_trials} stopped early by ASHA)",
        f"best: {outcome.best_family} {json.dumps(outcome.best_params, default=str)}",
        f"cv {outcome.metric}: {outcome.best_cv_score:.4f}; test: "
        + ", ".join(f"{k.removeprefix('test_')}={v:.4f}" for k, v in outcome.test_scores.items()),
        f"registered: models:/{outcome.model_name}/{outcome.model_version}"
        + (
            f" (alias @{outcome.alias} -> models:/{outcome.model_name}@{outcome.alias})"
            if outcome.alias
            else " (no alias moved)"
        ),
        *([f"gate: {outcome.gate.reason}"] if outcome.gate else []),
        *(
            [
                f"events: {outcome.events.get('raysplit.events.rows')} labelled rows of"
                f" {outcome.events.get('raysplit.events.experiment')} from"
                f" {outcome.events.get('raysplit.events.url')}"
                f" ({outcome.events.get('raysplit.events.since')} to"
                f" {outcome.events.get('raysplit.events.until')})"
            ]
            if outcome.events
            else []
        ),
        f"features (as requests name them): {', '.join(outcome.features)}",
        *(
            [
                "renamed from the data: "
                + ", ".join(f"{old!r} -> {new}" for old, new in outcome.renamed.items())
            ]
            if outcome.renamed
            else []
        ),
        f"MLflow search run: {outcome.parent_run_id} (experiment {outcome.experiment_id})",
        f"ONNX: {outcome.onnx}",
    ]
