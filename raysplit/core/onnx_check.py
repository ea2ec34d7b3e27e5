"""When a model's ONNX conversion may answer in its place, and how ONNX Runtime is called.

Training (``tune``) decides whether the conversion it logs beside the scikit-learn model is
verified, and serving (``serve_app``) re-checks that verdict when it loads the model. Both
must apply the same rule with the same tolerances and call the ONNX graph the same way, so
the rule, the tolerances and the call live here, in the foundation both import. The
conversion itself (``skl2onnx``) stays in training (:mod:`tune.onnx_export`): serving only
runs graphs, and so needs only ``onnxruntime``.

The rule: on every row checked, the graph's labels equal ``predict``'s exactly, and its
probabilities (classifiers) or values (regressors) are within the tolerances below. A
model is served by ONNX Runtime only when training verified it on the whole held-out test
split *and* the replica re-checked it on the sample rows the check file carries, against
the scikit-learn estimator it loaded; anything else is served by scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

ONNX_FILE = "model.onnx"
ONNX_CHECK_FILE = "onnx_check.json"
CHECK_SCHEMA_VERSION = 1

# ONNX Runtime computes in float32 (the converted graphs take float input), scikit-learn in
# float64: measured differences are 1e-7 to 7e-7 (every verified family on iris, wine,
# breast cancer and digits). 1e-4 is over two orders of magnitude above that noise, so an
# honest conversion always passes, and small enough that a client would read the same
# probability (a converter bug, such as a wrong calibration or vote, is off by 1e-2 or more).
PROBA_ATOL = 1e-4
# Regressors: |onnx - sklearn| <= VALUE_TOL * max(1, |sklearn|), i.e. absolute below 1 and
# relative above: float32 carries ~7 significant digits, so a fixed absolute bound would
# be too tight for targets in the thousands and too loose for targets near zero.
VALUE_TOL = 1e-4
# Held-out rows stored in the check file for the replica's own check at load.
SAMPLE_ROWS = 64

# Final estimators never served by ONNX even if the test split agrees: k-NN answers hinge
# on exact distance ties (duplicate rows, equal vote counts), which float32 distances break
# differently from scikit-learn's float64 ones; measured: 0.1% of labels differ on 1,000
# rows although small test splits often agree. A test split cannot prove their absence.
TIE_SENSITIVE: dict[str, str] = {
    "KNeighborsClassifier": "k-NN votes depend on exact distance ties, which float32 breaks"
    " differently from scikit-learn (0.1% of labels measured to differ)",
    "KNeighborsRegressor": "k-NN averages depend on exact distance ties, which float32"
    " breaks differently from scikit-learn",
}


class OnnxCheck(BaseModel):
    """The verdict on one conversion, logged as ``onnx_check.json`` beside the model.

    ``verified`` is the only field serving acts on; the figures say how close it came.
    """

    schema_version: int = CHECK_SCHEMA_VERSION
    verified: bool
    reason: str  # why not, or what was checked
    rows: int = 0  # held-out rows compared
    label_mismatches: int = 0
    max_proba_diff: float | None = None  # classifiers with predict_proba
    max_value_diff: float | None = None  # regressors, scaled by max(1, |value|)
    proba_atol: float = PROBA_ATOL
    value_tol: float = VALUE_TOL
    versions: dict[str, str] = Field(default_factory=dict)
    sample_rows: list[list[float]] = Field(default_factory=list)  # for the check at load


@dataclass(frozen=True)
class Agreement:
    """How the graph's answers compare with scikit-learn's on some rows."""

    rows: int
    label_mismatches: int
    max_proba_diff: float | None
    max_value_diff: float | None

    @property
    def agrees(self) -> bool:
        if self.label_mismatches:
            return False
        if self.max_proba_diff is not None and not self.max_proba_diff <= PROBA_ATOL:
            return False
        return self.max_value_diff is None or self.max_value_diff <= VALUE_TOL

    def describe(self) -> str:
        parts = [f"{self.rows} rows"]
        if self.max_value_diff is None:
            parts.append(f"{self.label_mismatches} labels differ")
        if self.max_proba_diff is not None:
            parts.append(f"max probability difference {self.max_proba_diff:.3g}")
        if self.max_value_diff is not None:
            parts.append(f"max scaled value difference {self.max_value_diff:.3g}")
        return ", ".join(parts)


def runtime_versions() -> dict[str, str]:
    """Versions that decide the answers of both paths, recorded with every verdict."""
    found = {}
    for package in ("scikit-learn", "onnxruntime", "skl2onnx", "onnx"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def is_classifier(estimator: Any) -> bool:
    return getattr(estimator, "classes_", None) is not None


class OnnxModel:
    """An ONNX Runtime session for a converted scikit-learn model, answering like it.

    One intra-op and one inter-op thread: a replica is one of several on the machine and
    scales out by replicas; ONNX Runtime's default (one thread per core) would make every
    replica's call compete for all cores. The session is safe to call from several
    threads at once, as the batching worker threads do.
    """

    def __init__(self, graph: bytes, classifier: bool) -> None:
        import onnxruntime  # here, so importing this module costs nothing without ONNX

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            graph, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.classifier = classifier
        if classifier and len(self._outputs) < 2:
            raise ValueError("the graph has no probability output (was zipmap left on?)")

    def run(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (or values) and, for classifiers, class probabilities, one row each."""
        answers = self._session.run(self._outputs, {self._input: _as_float32(rows)})
        if self.classifier:
            return np.asarray(answers[0]).ravel(), np.asarray(answers[1])
        return np.asarray(answers[0]).ravel(), None


def _as_float32(rows: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(rows, dtype=np.float64), dtype=np.float32)


def compare(estimator: Any, graph: OnnxModel, rows: Any) -> Agreement:
    """Answer ``rows`` both ways and measure the differences the rule bounds.

    ``rows`` reach scikit-learn as given (a DataFrame keeps its column names, so a model
    fitted on one does not warn) and the graph as float32.
    """
    labels, probabilities = graph.run(rows)
    expected = np.asarray(estimator.predict(rows))
    if not is_classifier(estimator):
        scale = np.maximum(1.0, np.abs(expected.astype(np.float64)))
        diff = np.abs(labels.astype(np.float64) - expected) / scale
        return Agreement(len(rows), 0, None, float(diff.max()) if len(diff) else 0.0)
    # as Python values, type included: serving returns ``.tolist()`` of either answer, and
    # a label 1 where scikit-learn says 1.0 (or "1") would be a different answer to a client
    mismatches = sum(
        a != b or type(a) is not type(b)
        for a, b in zip(labels.tolist(), expected.tolist(), strict=True)
    )
    max_proba = None
    if hasattr(estimator, "predict_proba") and probabilities is not None:
        reference = np.asarray(estimator.predict_proba(rows), dtype=np.float64)
        if reference.shape != probabilities.shape:
            return Agreement(len(rows), len(rows), float("inf"), None)
        max_proba = float(np.abs(probabilities - reference).max()) if len(rows) else 0.0
    return Agreement(len(rows), mismatches, max_proba, None)


def tie_sensitive(estimator: Any) -> str | None:
    """Why ``estimator`` is never served by ONNX, or None."""
    steps = getattr(estimator, "steps", None)
    final = steps[-1][1] if steps else estimator
    return TIE_SENSITIVE.get(type(final).__name__)
