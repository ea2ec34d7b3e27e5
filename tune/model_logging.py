"""How `raysplit tune` logs what it found: the best model refitted and evaluated, in the
format that round-trips (skops, else cloudpickle), with its ONNX conversion beside it only
when verified, and both data splits as the run's dataset inputs.

Kept apart from :mod:`tune.search` (which runs the search and registers the result) so
that the rules for what a registered model file holds can be read and tested alone.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.sklearn
import numpy as np
import skops.io
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from raysplit.core.onnx_check import ONNX_CHECK_FILE, ONNX_FILE, OnnxCheck
from raysplit.core.reference_stats import REFERENCE_STATS_FILE, reference_stats
from raysplit.core.trust import untrusted
from tune.config import SearchPlan, TuneSpec
from tune.datasets import Split, Task
from tune.evaluation import diagnostic_figure, holdout_metrics
from tune.onnx_export import export_onnx
from tune.retraining.event_rows import EventSourceSummary, EventStoreSource

SKOPS_CHECK_ROWS = 5  # rows the skops round trip must predict identically

_log = logging.getLogger(__name__)


def choose_serialization(model: Any, x_sample: Any) -> tuple[str, list[str] | None]:
    """``("skops", types to trust)`` if skops round-trips ``model``, else ``("cloudpickle", None)``.

    Loading a pickle runs whatever code the file names, so serving refuses pickle models
    unless ``allow_pickle: true`` (see :func:`serve_app.predict.models.load`). skops is preferred,
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


def log_best_model(
    spec: TuneSpec,
    plan: SearchPlan,
    split: Split,
    family: str,
    params: dict[str, Any],
    digest_tags: dict[str, str],
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
    model = plan.families[family].build(params, seed=spec.search.seed)
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


def log_inputs(
    split: Split, dataset_name: str, events: EventSourceSummary | None = None
) -> dict[str, str]:
    """Log both splits as the run's dataset inputs; event rows carry their store, window,
    row count and digest as the source
    (see :class:`tune.retraining.event_rows.EventStoreSource`)."""
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
