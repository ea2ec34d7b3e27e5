"""One search, end to end: validate, tune on Ray, log to MLflow, refit, register.

Order matters for "nothing left behind": every input is validated and the tracking store
is proven reachable before Ray starts or a run is created; the model is registered only
after it has been refitted, evaluated and logged.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.sklearn
import numpy as np
import ray
import skops.io
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experimental.output import AirVerbosity, TuneTerminalReporter
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raysplit.core.errors import RaysplitError
from raysplit.core.onnx_check import ONNX_CHECK_FILE, ONNX_FILE, OnnxCheck
from raysplit.core.reference_stats import REFERENCE_STATS_FILE, reference_stats
from raysplit.core.settings import Locations
from raysplit.core.trust import untrusted
from tune.config import SearchPlan, TuneSpec, resolve_plan
from tune.datasets import Dataset, Split, Task, load_dataset, split_dataset
from tune.evaluation import diagnostic_figure, holdout_metrics
from tune.event_data import EventSourceSummary, EventStoreSource, load_event_split
from tune.incumbents import score_incumbent
from tune.onnx_export import export_onnx
from tune.registry import register_version
from tune.retrain_gate import GateDecision, decide_gate
from tune.spaces import candidate_from_config, flatten_trial_config, search_setup, trial_name
from tune.tracking import TrialLogger, connect, ensure_experiment
from tune.trainable import TrialData, cross_validate

SKOPS_CHECK_ROWS = 5  # rows the skops round trip must predict identically

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


def choose_serialization(model: Any, x_sample: Any) -> tuple[str, list[str] | None]:
    """``("skops", types to trust)`` if skops round-trips ``model``, else ``("cloudpickle", None)``.

    Loading a pickle runs whatever code the file names, so serving refuses pickle models
    unless ``allow_pickle: true`` (see :func:`serve_app.models.load`). skops is preferred,
    but only where it truly round-trips: the file must hold nothing but scikit-learn, NumPy
    and SciPy types (the ones serving trusts), and the model loaded back with exactly those
    types must answer ``predict`` (and ``predict_proba``) on the first rows of ``x_sample``
    exactly as the original does. Anything else (a custom function in a FunctionTransformer,
    a third-party estimator, a skops error) falls back to cloudpickle with a warning, because
    a model that serves only with ``allow_pickle: true`` beats a search that fails after
    all its trials, or a skops file that predicts differently.
    """
    rows = x_sample[:SKOPS_CHECK_ROWS]
    try:
        data = skops.io.dumps(model)
        types = skops.io.get_untrusted_types(data=data)
        foreign = untrusted(types)
        if foreign:
            reason = f"it holds types outside scikit-learn/NumPy/SciPy: {foreign}"
        else:
            reloaded = skops.io.loads(data, trusted=types)
            if _same_answers(model, reloaded, rows):
                return "skops", types
            reason = "the model skops loads back predicts differently"
    except Exception as exc:  # skops cannot dump or load some object in the model
        reason = f"skops failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    _log.warning(
        "logging the model with cloudpickle, not skops, because %s; serving will refuse it"
        " unless the deployment's user_config sets allow_pickle: true (docs/security.md)",
        reason,
    )
    return "cloudpickle", None


def _same_answers(model: Any, reloaded: Any, rows: Any) -> bool:
    """Whether both give identical ``predict`` (and ``predict_proba``) output on ``rows``."""
    methods = ["predict", "predict_proba"] if hasattr(model, "predict_proba") else ["predict"]
    try:
        for method in methods:
            np.testing.assert_array_equal(
                getattr(reloaded, method)(rows), getattr(model, method)(rows)
            )
    except AssertionError:
        return False
    return True


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


def onnx_tags(check: OnnxCheck) -> dict[str, str]:
    """The registered version's ONNX tags: the verdict serving acts on, and why."""
    return {
        "raysplit.onnx": "verified" if check.verified else "not_verified",
        "raysplit.onnx_reason": check.reason[:500],
    }


def onnx_files(model: Any, x_test: Any, directory: Path) -> tuple[OnnxCheck, list[str]]:
    """Convert and verify ``model`` on ``x_test`` (:func:`tune.onnx_export.export_onnx`) and
    write what to log beside it into ``directory``: ``onnx_check.json`` always (the verdict,
    or why there is no graph), ``model.onnx`` only when verified."""
    check, graph = export_onnx(model, x_test)
    check_path = directory / ONNX_CHECK_FILE
    check_path.write_text(check.model_dump_json())
    files = [str(check_path)]
    if graph is not None:
        graph_path = directory / ONNX_FILE
        graph_path.write_bytes(graph)
        files.append(str(graph_path))
    return check, files


def _log_best_model(
    spec: TuneSpec, plan: SearchPlan, split: Split, best: TrialSummary, digest_tags: dict
) -> tuple[ModelInfo, dict[str, float], OnnxCheck]:
    """Refit on the whole training split, evaluate on the test split, log the model.

    The model is logged with skops when that round-trips, else with cloudpickle (see
    :func:`choose_serialization`); the choice is tagged on the run and recorded in the
    model's metadata, because serving refuses cloudpickle unless ``allow_pickle: true``.

    Its ONNX conversion goes into the model's ``extra_files`` (downloaded with it, so a
    replica finds it beside the scikit-learn file) only when it agrees with the model on
    the whole test split; ``onnx_check.json`` says what was checked, or why there is no
    graph. Either way the scikit-learn model is what is registered.
    """
    model = plan.families[best.family].build(best.params, seed=spec.search.seed)
    model.fit(split.x_train, split.y_train)
    scores = holdout_metrics(model, split.x_test, split.y_test, plan.task)
    mlflow.log_metrics(scores)
    name, figure = diagnostic_figure(model, split.x_test, split.y_test, plan.task)
    mlflow.log_figure(figure, name)
    stats = reference_stats(
        split.x_train, split.y_train, plan.task is Task.CLASSIFICATION, spec.dataset.seed
    )
    serialization, trusted_types = choose_serialization(model, split.x_test)
    mlflow.set_tag("raysplit.serialization_format", serialization)
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / REFERENCE_STATS_FILE
        stats_path.write_text(stats.model_dump_json())
        mlflow.log_artifact(str(stats_path))
        check, onnx_extra = onnx_files(model, split.x_test, Path(tmp))
        mlflow.set_tags(onnx_tags(check))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(split.x_train, model.predict(split.x_train)),
            input_example=split.x_train.head(3),
            serialization_format=serialization,
            skops_trusted_types=trusted_types,
            extra_files=[str(stats_path), *onnx_extra],
            metadata={"task": str(plan.task), "serialization_format": serialization, **digest_tags},
            # pinned from the running environment, without MLflow's slow inference pass; each
            # format needs its own loader installed wherever the model is loaded
            pip_requirements=mlflow.sklearn.get_default_pip_requirements(
                include_cloudpickle=serialization == "cloudpickle",
                include_skops=serialization == "skops",
            ),
        )
    return info, scores, check


def _log_inputs(
    split: Split, dataset_name: str, events: EventSourceSummary | None = None
) -> dict[str, str]:
    """Log both splits as the run's dataset inputs; event rows carry their store, window,
    row count and digest as the source (see :class:`tune.event_data.EventStoreSource`)."""
    digests = {}
    source = EventStoreSource.of(events) if events is not None else None
    for context, features, target in (
        ("training", split.x_train, split.y_train),
        ("testing", split.x_test, split.y_test),
    ):
        frame = features.assign(target=target.to_numpy())
        data = mlflow.data.from_pandas(
            frame, source=source, targets="target", name=f"{dataset_name}-{context}"
        )
        mlflow.log_input(data, context=context)
        digests[f"dataset_digest_{context}"] = data.digest
    return digests


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


def run_search(spec: TuneSpec, locations: Locations) -> SearchOutcome:
    """Validate everything, then search, log, refit and register; see the module docstring."""
    dataset, plan, split, events = _data(spec, locations)
    source_tags = events.tags() if events is not None else {}
    data_name = events.input_name if events is not None else dataset.name
    model_name = spec.registration.model_name or dataset.name
    client = connect(locations)
    experiment_id = ensure_experiment(
        client, spec.experiment or f"raysplit-{model_name}", locations
    )

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(log_to_driver=False, configure_logging=False)
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"search-{model_name}") as run:
            parent = run.info.run_id
            mlflow.log_params(
                {
                    "dataset": data_name,
                    "task": str(dataset.task),
                    "metric": plan.metric.name,
                    "families": ",".join(plan.spaces),
                    **spec.search.model_dump(exclude={"families", "metric"}),
                    "test_size": spec.dataset.test_size,
                    "train_rows": len(split.x_train),
                    "test_rows": len(split.x_test),
                }
            )
            mlflow.set_tags({"raysplit.kind": "search", **source_tags})
            digests = _log_inputs(split, data_name, events)
            logger = TrialLogger(
                locations.mlflow_tracking_uri, experiment_id, parent, spec.search.cv_folds
            )
            search_started = time.perf_counter()
            results = _run_trials(spec, plan, split, logger, locations)
            search_seconds = time.perf_counter() - search_started
            summaries, errors = _trial_summaries(results)
            complete = [s for s in summaries if s.folds_done == spec.search.cv_folds]
            if not complete:
                reason = errors[0] if errors else "no trial reported a score"
                raise RaysplitError(f"all {len(results)} trials failed; first error: {reason}")
            best = _best(summaries, spec.search.cv_folds, plan.metric.mode)
            mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
            mlflow.log_param("best.family", best.family)
            mlflow.log_metrics(
                {
                    f"best_cv_{plan.metric.name}": best.cv_mean,
                    "trials": len(results),
                    "trials_early_stopped": len(summaries) - len(complete),
                    "trials_failed": len(errors),
                }
            )
            model_info, scores, onnx_check = _log_best_model(spec, plan, split, best, digests)
            tags = {
                "raysplit.search_run_id": parent,
                "raysplit.metric": plan.metric.name,
                "raysplit.cv_score": f"{best.cv_mean:.6f}",
                "raysplit.test_score": f"{scores['test_' + plan.metric.name]:.6f}",
                "raysplit.family": best.family,
                "raysplit.task": str(dataset.task),
                "raysplit.dataset": data_name,
                "raysplit.dataset_digest": digests["dataset_digest_training"],
                "raysplit.serialization_format": model_info.metadata["serialization_format"],
                **onnx_tags(onnx_check),
                **source_tags,
            }
            gate = _gate(client, spec, plan, split, model_name, scores)
            alias = spec.registration.alias if gate is None or gate.promote else None
            if gate is not None:
                verdict = gate_tags(gate)
                tags.update(verdict)
                mlflow.set_tags(verdict)
            version = register_version(
                client,
                model_name,
                model_info.model_uri,
                parent,
                tags,
                alias,
                model_id=model_info.model_id,
            )
            mlflow.set_tag("raysplit.registered_version", f"{model_name}/{version.version}")
    finally:
        if started_ray:
            ray.shutdown()
    return SearchOutcome(
        experiment_id=experiment_id,
        parent_run_id=parent,
        trials=len(results),
        completed_trials=len(complete),
        early_stopped_trials=len(summaries) - len(complete),
        metric=plan.metric.name,
        best_family=best.family,
        best_params=best.params,
        best_cv_score=best.cv_mean,
        test_scores=scores,
        model_name=model_name,
        model_version=str(version.version),
        alias=alias,
        search_seconds=search_seconds,
        folds_fitted=sum(s.folds_done for s in summaries),
        onnx=("verified: " if onnx_check.verified else "not verified: ") + onnx_check.reason,
        gate=gate,
        events=events.tags() if events is not None else {},
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
        f"MLflow search run: {outcome.parent_run_id} (experiment {outcome.experiment_id})",
        f"ONNX: {outcome.onnx}",
    ]
