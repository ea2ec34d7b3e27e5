"""Loading registered model versions from MLflow into a replica (the MLflow edge).

An alias is resolved to a concrete version at load time and the model is loaded by that
version, so the replica knows exactly what it serves and a moved alias is noticed as a
new version at the next ``reconfigure()``.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysplit.core.model_files import UnsafeModel, read_model
from raysplit.core.onnx_check import (
    ONNX_CHECK_FILE,
    ONNX_FILE,
    OnnxCheck,
    OnnxModel,
    compare,
    is_classifier,
)
from raysplit.core.reference_stats import REFERENCE_STATS_FILE, ReferenceStats
from serve_app.config.ingress import VariantConfig

logger = logging.getLogger("ray.serve")

# Models are fitted on DataFrames and served on validated arrays in signature order.
warnings.filterwarnings("ignore", message="X does not have valid feature names")

# Final estimators whose ``predict`` is documented as the class of highest
# ``predict_proba`` (ties to the first class in both): for these one probability pass
# answers both, which halves the model time per request.
ARGMAX_OF_PROBA = frozenset(
    {
        "CalibratedClassifierCV",
        "DecisionTreeClassifier",
        "ExtraTreesClassifier",
        "GaussianNB",
        "GradientBoostingClassifier",
        "HistGradientBoostingClassifier",
        "KNeighborsClassifier",
        "LogisticRegression",
        "RandomForestClassifier",
    }
)

# Where a registered version's files may come from: artifacts logged through the configured
# tracking server. The registry itself accepts any ``source`` (s3://, http://, file://, seen
# with MLflow 3.17), so a version pointing elsewhere is refused rather than fetched.
TRUSTED_SOURCES = ("models:/m-", "runs:/", "mlflow-artifacts:/")
# Whole: a registered model may itself be named "m-...", and a source "models:/m-x/1" (or
# "models:/m-x@a") is stored by the registry as a download location of that other version's,
# which can be anywhere.
_LOGGED_MODEL_SOURCE = re.compile(r"^models:/m-[0-9a-f]+$")

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class ModelLoadError(RuntimeError):
    """A variant's model could not be resolved or loaded; the message says which and why."""


@dataclass(frozen=True)
class ResolvedUri:
    """What a variant's URI points at right now."""

    uri: str  # pinned: models:/NAME/VERSION, or the runs:/ URI as given
    name: str
    version: str | None


Output = tuple[list[Any], list[list[float]] | None]  # predictions, class probabilities


def final_estimator(estimator: Any) -> Any:
    """The last step of a pipeline (or the estimator itself)."""
    steps = getattr(estimator, "steps", None)
    return final_estimator(steps[-1][1]) if steps else estimator


@dataclass(frozen=True)
class LoadedModel:
    resolved: ResolvedUri
    estimator: Any
    features: list[str]
    classes: list[Any] | None
    reference: ReferenceStats | None = None  # training-split statistics, for drift
    pickled: bool = False  # loaded from a pickle: only ever reused while that is allowed
    # the verified ONNX graph that answers instead of ``estimator`` (see :func:`compiled_runtime`)
    compiled: OnnxModel | None = None
    runtime_reason: str | None = None  # why this runtime: the check's verdict, or why not

    @property
    def runtime(self) -> str:
        """``onnx`` or ``sklearn``: what answers this model's requests."""
        return "sklearn" if self.compiled is None else "onnx"

    @cached_property
    def _proba_decides(self) -> bool:
        return type(final_estimator(self.estimator)).__name__ in ARGMAX_OF_PROBA

    @cached_property
    def _class_array(self) -> np.ndarray:
        return np.asarray(self.estimator.classes_)

    def predict(self, rows: np.ndarray) -> Output:
        """Predictions (and probabilities for classifiers) for a 2-D array of rows.

        scikit-learn's per-call overhead (validation, pipeline steps) is about a
        millisecond whatever the row count, so callers should pass many rows at once
        (see :mod:`serve_app.predict.batching`), and a classifier runs one probability pass.
        A verified ONNX graph has no such overhead (tens of microseconds a call) and gives
        the same answers within :mod:`raysplit.core.onnx_check`'s tolerances.
        """
        if self.compiled is not None:
            labels, probabilities = self.compiled.run(rows)
            if self.classes is None or probabilities is None:
                return labels.tolist(), None
            return labels.tolist(), probabilities.tolist()
        if self.classes is None:
            return self.estimator.predict(rows).tolist(), None
        probabilities = self.estimator.predict_proba(rows)
        if self._proba_decides:
            predictions = self._class_array[probabilities.argmax(axis=1)].tolist()
        else:
            predictions = self.estimator.predict(rows).tolist()
        return predictions, probabilities.tolist()


def resolve(uri: str, client: MlflowClient) -> ResolvedUri:
    """Pin ``models:/NAME@ALIAS`` to the version the alias names now."""
    match = _REGISTERED.match(uri)
    try:
        if not match:
            return ResolvedUri(uri, uri.split(":/", 1)[-1].split("/")[0], None)
        if match["alias"]:
            found = client.get_model_version_by_alias(match["name"], match["alias"])
        else:
            found = client.get_model_version(match["name"], match["version"])
    except MlflowException as exc:
        raise ModelLoadError(f"{uri}: {exc.message}") from exc
    except Exception as exc:  # the tracking server is unreachable, times out, ...
        raise ModelLoadError(f"{uri}: tracking server unavailable: {_first_line(exc)}") from exc
    source = str(found.source)
    if not source.startswith(TRUSTED_SOURCES) or (
        source.startswith("models:/") and not _LOGGED_MODEL_SOURCE.match(source)
    ):
        raise ModelLoadError(
            f"{uri}: version {found.version} points at '{found.source}', outside the configured"
            " tracking server; raysplit loads only models logged through MLflow"
            " (models:/m-..., runs:/...)"
        )
    version = str(found.version)
    return ResolvedUri(f"models:/{match['name']}/{version}", match["name"], version)


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def load(variant: VariantConfig, resolved: ResolvedUri, allow_pickle: bool = False) -> LoadedModel:
    """Load one variant at its pinned URI (see :func:`resolve`); every failure becomes a
    ``ModelLoadError``.

    Unpickling runs whatever code the file names, so anyone who can register a model
    version could run code in every replica. skops files (what ``raysplit tune`` logs) load
    only scikit-learn, NumPy and SciPy types, and pickle files are refused unless the
    deployment says ``allow_pickle: true`` (:mod:`raysplit.core.model_files`).
    """
    try:
        local = Path(mlflow.artifacts.download_artifacts(resolved.uri))
        files = read_model(local, allow_pickle)
        estimator, pickled, signature = files.estimator, files.pickled, files.description.signature
    except Exception as exc:  # corrupt artifacts, untrusted types, missing flavor...
        reason = str(exc) if isinstance(exc, UnsafeModel) else _first_line(exc)
        raise ModelLoadError(f"variant '{variant.name}' ({resolved.uri}): {reason}") from exc
    if signature is None:
        raise ModelLoadError(
            f"variant '{variant.name}' ({resolved.uri}) has no signature; log it with one"
        )
    stats_file = local / "extra_files" / REFERENCE_STATS_FILE
    reference = (
        ReferenceStats.model_validate_json(stats_file.read_text()) if stats_file.exists() else None
    )
    classes = getattr(estimator, "classes_", None)
    proba = classes is not None and hasattr(estimator, "predict_proba")
    compiled, runtime_reason = compiled_runtime(local / "extra_files", estimator)
    if compiled is None and (local / "extra_files" / ONNX_FILE).exists():
        logger.warning(
            "variant '%s' (%s): serving scikit-learn, not its ONNX model: %s",
            variant.name,
            resolved.uri,
            runtime_reason,
        )
    return LoadedModel(
        resolved=resolved,
        estimator=estimator,
        features=signature.inputs.input_names(),
        classes=classes.tolist() if proba else None,
        reference=reference,
        pickled=pickled,
        compiled=compiled,
        runtime_reason=runtime_reason,
    )


def compiled_runtime(extra: Path, estimator: Any) -> tuple[OnnxModel | None, str]:
    """The model's ONNX graph if it may answer in the estimator's place, and why (not).

    Only when training verified the graph on the whole test split (``onnx_check.json``)
    *and* it answers the sample rows that file carries as the estimator loaded here does:
    the graph and the check file are just files beside the model, replaceable by anyone
    who can write artifacts, and a newer scikit-learn here may answer differently from the
    one training compared with. Never a reason to refuse the model: anything short of
    that is served by scikit-learn.
    """
    check_file, graph_file = extra / ONNX_CHECK_FILE, extra / ONNX_FILE
    if not check_file.exists():
        return None, "no ONNX check logged with the model"
    try:
        check = OnnxCheck.model_validate_json(check_file.read_text())
        if not check.verified:
            return None, f"ONNX not verified at training: {check.reason}"
        if not graph_file.exists():
            return None, f"{ONNX_CHECK_FILE} says verified but {ONNX_FILE} is missing"
        if not check.sample_rows:
            return None, f"{ONNX_CHECK_FILE} carries no sample rows to re-check at load"
        graph = OnnxModel(graph_file.read_bytes(), is_classifier(estimator))
        agreement = compare(estimator, graph, np.asarray(check.sample_rows, dtype=np.float64))
    except Exception as exc:  # a corrupt graph or check file, a wrong input width...
        return None, f"ONNX model unusable: {_first_line(exc)}"
    if not agreement.agrees:
        return None, f"ONNX disagrees with scikit-learn at load: {agreement.describe()}"
    return graph, f"ONNX verified at training and at load ({agreement.describe()})"
