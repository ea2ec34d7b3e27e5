"""The shared statistics: intervals and the sample sizes verdicts wait for; and the
stratified interval's behaviour on hand-checked cases."""

import pytest
from statsmodels.stats.proportion import confint_proportions_2indep

from raysplit.eventstore.aggregates import AssignmentKind, Cell
from serve_app.stats.common import (
    accuracy_interval,
    fixed_horizon_sample_size,
    sequential_power,
    sequential_sample_size,
)
from serve_app.stats.models import Metric
from serve_app.stats.stratified import stratified_comparison


def test_wilson_interval_matches_the_textbook_value() -> None:
    interval = accuracy_interval(50, 100)
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(0.4038, abs=1e-4)
    assert interval.high == pytest.approx(0.5962, abs=1e-4)
    assert accuracy_interval(0, 0) is None


def test_fixed_horizon_sample_size_is_the_textbook_one() -> None:
    """80% vs 85% at alpha 0.05 and 80% power: Cohen's h gives about 900 per arm."""
    n = fixed_horizon_sample_size(0.4, 0.357, 0.05, binary_rates=(0.85, 0.80))
    assert 880 <= n <= 920


def test_sequential_power_reaches_80_percent_at_its_sample_size() -> None:
    variance, effect = 2 * 0.8 * 0.2, 0.05
    n = sequential_sample_size(variance, effect, effect**2)
    assert sequential_power(n, variance, effect, effect**2) >= 0.8
    assert sequential_power(n - 1, variance, effect, effect**2) < 0.8


def labelled(variant: str, n: int, correct: int) -> Cell:
    return Cell(
        variant=variant,
        epoch=1,
        assignment=AssignmentKind.SPLIT,
        bucket=0,
        requests=n,
        errors=0,
        labelled=n,
        correct=correct,
    )


def test_one_stratum_interval_is_close_to_newcombes_published_example() -> None:
    """56/70 against 48/80 (Newcombe 1998): 0.0524 to 0.3339."""
    result = stratified_comparison(
        [labelled("a", 80, 48), labelled("b", 70, 56)], "a", "b", Metric.ACCURACY
    )
    low, high = confint_proportions_2indep(56, 70, 48, 80, method="newcomb")
    assert result.difference.estimate == pytest.approx(0.2)
    assert result.difference.low == pytest.approx(low, abs=0.01)
    assert result.difference.high == pytest.approx(high, abs=0.01)


def test_the_interval_does_not_collapse_at_a_perfect_small_arm() -> None:
    """20 of 20 against 190 of 200: a Wald interval would exclude zero; the data do not."""
    result = stratified_comparison(
        [labelled("champion", 200, 190), labelled("challenger", 20, 20)],
        "champion",
        "challenger",
        Metric.ACCURACY,
    )
    assert result.difference.low < 0 < result.difference.high
    assert result.p_value > 0.05
