"""Input drift per feature against the training split's reference statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from scipy import stats

from raysplit.core.reference_stats import ReferenceStats
from serve_app.stats.settings import MIN_DRIFT_ROWS, PSI_DRIFT, PSI_MODERATE


class FeatureDrift(BaseModel):
    psi: float
    ks_p_value: float | None
    status: str  # ok | moderate | drift


def psi(edges: Sequence[float], reference: Sequence[float], values: np.ndarray) -> float:
    """Population stability index over the reference's decile bins (values outside the
    training range fall into the outer bins)."""
    inner = np.asarray(edges[1:-1], dtype=float)
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(reference))
    actual = np.clip(counts / max(len(values), 1), 1e-4, None)
    expected = np.clip(np.asarray(reference, dtype=float), 1e-4, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def feature_drift(
    reference: ReferenceStats, features: list[str], rows: np.ndarray
) -> dict[str, FeatureDrift] | None:
    """PSI (and KS where the reference kept a sample) for each feature; None if too few rows."""
    if len(rows) < MIN_DRIFT_ROWS:
        return None
    result = {}
    for index, name in enumerate(features):
        ref = reference.features.get(name)
        if ref is None:
            continue
        values = rows[:, index]
        score = psi(ref.bin_edges, ref.bin_proportions, values)
        ks = float(stats.ks_2samp(values, ref.sample).pvalue) if ref.sample else None
        status = "drift" if score >= PSI_DRIFT else "moderate" if score >= PSI_MODERATE else "ok"
        result[name] = FeatureDrift(psi=score, ks_p_value=ks, status=status)
    return result
