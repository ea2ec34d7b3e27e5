"""Convert the best model to ONNX and verify the conversion on the held-out test split.

A conversion is trusted only as far as it was checked: the graph computes in float32 and
re-implements every estimator, so it may disagree with scikit-learn (ties, thresholds, an
unsupported option). :func:`export_onnx` therefore never fails a search: it returns the
graph only with a verdict that it agrees on every test row under
:mod:`raysplit.core.onnx_check`'s rule, and otherwise a verdict that says why not, so the
scikit-learn model is registered (and served) alone.

skl2onnx is imported here only: serving runs graphs and needs ``onnxruntime`` alone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from raysplit.core.onnx_check import (
    SAMPLE_ROWS,
    OnnxCheck,
    OnnxModel,
    compare,
    is_classifier,
    runtime_versions,
    tie_sensitive,
)

_log = logging.getLogger(__name__)


def final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    return final_estimator(steps[-1][1]) if steps else model


def convert(model: Any, n_features: int) -> bytes:
    """The model as a serialised ONNX graph taking float32 rows of ``n_features``.

    Classifiers return probabilities as an array (``zipmap`` off), not a list of dicts,
    so both runtimes' answers have the same shape.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(final_estimator(model)): {"zipmap": False}} if is_classifier(model) else None
    with _integer_missing_flags():
        graph = to_onnx(
            model, initial_types=[("input", FloatTensorType([None, n_features]))], options=options
        )
    return graph.SerializeToString()


@contextmanager
def _integer_missing_flags() -> Iterator[None]:
    """Work around skl2onnx 1.20 failing on every HistGradientBoosting model with protobuf 7.

    Its tree writer gives leaves the flag ``missing = False`` (a bool) and branches the
    node's ``missing_go_to_left`` (NumPy uint8), and protobuf 7 refuses a bool in an
    integer list ("Expected an int, got a boolean"). Passing the same flag as an ``int``
    changes no value in the graph, and the graph is verified against scikit-learn anyway.
    Restored on exit; without the writer (another skl2onnx) nothing is patched.
    """
    from skl2onnx.common import tree_ensemble

    original = getattr(tree_ensemble, "add_node", None)
    if original is None:
        yield
        return

    @functools.wraps(original)
    def add_node(*args: Any, **kwargs: Any) -> Any:
        flag = kwargs.get("nodes_missing_value_tracks_true")
        if flag is not None:
            kwargs["nodes_missing_value_tracks_true"] = int(flag)
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def export_onnx(model: Any, x_test: Any) -> tuple[OnnxCheck, bytes | None]:
    """Convert ``model`` (fitted) and check it on every row of ``x_test``.

    Returns the verdict and the graph, the graph only when verified. The verdict carries
    up to :data:`~raysplit.core.onnx_check.SAMPLE_ROWS` test rows, which a replica
    answers both ways again at load.
    """
    rows = np.asarray(x_test, dtype=np.float64)  # the check file's sample rows
    versions = runtime_versions()
    excluded = tie_sensitive(model)
    if excluded:
        return OnnxCheck(verified=False, reason=excluded, versions=versions), None
    try:
        graph = convert(model, rows.shape[1])
        agreement = compare(model, OnnxModel(graph, is_classifier(model)), x_test)
    except Exception as exc:  # skl2onnx has no converter, ONNX Runtime rejects the graph...
        reason = f"conversion failed: {_describe(exc)}"
        _log.warning("not logging an ONNX model: %s", reason)
        return OnnxCheck(verified=False, reason=reason, versions=versions), None
    figures = {
        "rows": agreement.rows,
        "label_mismatches": agreement.label_mismatches,
        "max_proba_diff": agreement.max_proba_diff,
        "max_value_diff": agreement.max_value_diff,
        "versions": versions,
    }
    if not agreement.agrees:
        reason = f"disagrees with scikit-learn on the test split: {agreement.describe()}"
        _log.warning("not logging an ONNX model: %s", reason)
        return OnnxCheck(verified=False, reason=reason, **figures), None
    check = OnnxCheck(
        verified=True,
        reason=f"agrees with scikit-learn on the test split: {agreement.describe()}",
        sample_rows=rows[:SAMPLE_ROWS].tolist(),
        **figures,
    )
    return check, graph


def _describe(exc: BaseException) -> str:
    """The error and its cause, one short line each (skl2onnx's own messages dump whole
    attribute arrays)."""
    parts = []
    while exc is not None and len(parts) < 2:
        first = str(exc).splitlines()[0] if str(exc) else ""
        parts.append(f"{type(exc).__name__}: {first[:200]}")
        exc = exc.__cause__
    return "; caused by ".join(parts)
