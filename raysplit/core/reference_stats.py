"""Per-feature reference statistics of the training split, shipped inside the logged model.

Serving compares live inputs against these to detect drift: decile bin edges and
proportions give PSI, a bounded raw sample allows a KS test. Kept as a versioned pydantic
model so the training and serving sides read one schema.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel

REFERENCE_STATS_FILE = "reference_stats.json"
SCHEMA_VERSION = 1
SAMPLE_SIZE = 1000
QUANTILES = np.linspace(0.0, 1.0, 11)


class FeatureReference(BaseModel):
    count: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: list[float]
    bin_edges: list[float]
    bin_proportions: list[float]
    sample: list[float]


class ReferenceStats(BaseModel):
    schema_version: int = SCHEMA_VERSION
    rows: int
    features: dict[str, FeatureReference]
    target_distribution: dict[str, float] | None = None


def feature_reference(values: pd.Series, rng: np.random.Generator) -> FeatureReference:
    data = values.to_numpy(dtype=float)
    quantiles = np.quantile(data, QUANTILES)
    edges = np.unique(quantiles)  # constant or few-valued features collapse their deciles
    if len(edges) < 2:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    counts, _ = np.histogram(data, bins=edges)
    sample = data if len(data) <= SAMPLE_SIZE else rng.choice(data, SAMPLE_SIZE, replace=False)
    return FeatureReference(
        count=len(data),
        mean=float(data.mean()),
        std=float(data.std(ddof=1)) if len(data) > 1 else 0.0,
        min=float(data.min()),
        max=float(data.max()),
        quantiles=quantiles.tolist(),
        bin_edges=edges.tolist(),
        bin_proportions=(counts / counts.sum()).tolist(),
        sample=sample.tolist(),
    )


def reference_stats(
    features: pd.DataFrame, target: pd.Series, classification: bool, seed: int = 0
) -> ReferenceStats:
    rng = np.random.default_rng(seed)
    distribution = None
    if classification:
        distribution = {str(k): float(v) for k, v in target.value_counts(normalize=True).items()}
    return ReferenceStats(
        rows=len(features),
        features={col: feature_reference(features[col], rng) for col in features.columns},
        target_distribution=distribution,
    )
