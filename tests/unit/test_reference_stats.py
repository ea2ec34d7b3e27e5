import numpy as np
import pandas as pd

from raysplit.core.reference_stats import SAMPLE_SIZE, ReferenceStats, reference_stats


def test_reference_stats_round_trip_and_bins() -> None:
    rng = np.random.default_rng(0)
    features = pd.DataFrame({"x": rng.normal(size=5000), "constant": np.ones(5000)})
    target = pd.Series(rng.choice(["a", "b"], size=5000))
    stats = reference_stats(features, target, classification=True)
    again = ReferenceStats.model_validate_json(stats.model_dump_json())
    x = again.features["x"]
    assert len(x.bin_edges) == 11
    assert abs(sum(x.bin_proportions) - 1) < 1e-9
    assert max(x.bin_proportions) - min(x.bin_proportions) < 0.01  # deciles hold ~10% each
    assert len(x.sample) == SAMPLE_SIZE
    assert again.features["constant"].bin_proportions == [1.0]
    assert set(again.target_distribution) == {"a", "b"}
