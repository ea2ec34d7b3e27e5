import numpy as np
import pytest

from serve_app.statistics import (
    Verdict,
    accuracy_interval,
    always_valid_p_value,
    compare,
    mean_interval,
    sample_ratio_p_value,
)


def test_wilson_interval_matches_the_textbook_value() -> None:
    interval = accuracy_interval(50, 100)
    assert interval.estimate == 0.5
    assert interval.low == pytest.approx(0.4038, abs=1e-4)
    assert interval.high == pytest.approx(0.5962, abs=1e-4)
    assert accuracy_interval(0, 0) is None


def test_mean_interval_covers_the_mean() -> None:
    interval = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert interval.estimate == 2.5 and interval.low < 2.5 < interval.high


def test_sample_ratio_mismatch() -> None:
    shares = {"champion": 0.5, "challenger": 0.5, "off": 0.0}
    assert sample_ratio_p_value({"champion": 5020, "challenger": 4980}, shares) > 0.5
    assert sample_ratio_p_value({"champion": 5300, "challenger": 4700}, shares) < 0.001


def test_always_valid_p_value_keeps_its_promise_under_peeking() -> None:
    """A/A tests watched at 50 checkpoints: the sequential p-value stays near alpha, the
    fixed-horizon p-value checked at the same points does not."""
    from scipy import stats

    rng = np.random.default_rng(7)
    sequential_hits = peeking_hits = 0
    runs = 200
    for _ in range(runs):
        a, b = rng.binomial(1, 0.8, 2000), rng.binomial(1, 0.8, 2000)
        sequential_hits += always_valid_p_value(a, b, tau2=0.01) < 0.05
        peeking_hits += any(
            stats.ttest_ind(a[:n], b[:n]).pvalue < 0.05 for n in range(40, 2001, 40)
        )
    assert sequential_hits / runs <= 0.06
    assert peeking_hits / runs > 0.15


@pytest.mark.parametrize(
    ("p_control", "p_challenger", "verdict"),
    [(0.7, 0.9, Verdict.BETTER), (0.9, 0.7, Verdict.WORSE), (0.8, 0.8, Verdict.NO_DIFFERENCE)],
)
def test_accuracy_verdicts(p_control: float, p_challenger: float, verdict: Verdict) -> None:
    rng = np.random.default_rng(1)
    control = rng.binomial(1, p_control, 1000)
    challenger = rng.binomial(1, p_challenger, 1000)
    result = compare("champion", "challenger", control, challenger, "accuracy", True, 0.5)
    assert result.verdict is verdict
    assert result.difference.low < p_challenger - p_control < result.difference.high


def test_not_enough_data_and_srm_come_first() -> None:
    small = compare("a", "b", [1, 0, 1], [1, 1, 1], "accuracy", True, 0.5)
    assert small.verdict is Verdict.NOT_ENOUGH_DATA
    rng = np.random.default_rng(2)
    srm = compare(
        "a",
        "b",
        rng.binomial(1, 0.7, 500),
        rng.binomial(1, 0.9, 500),
        "accuracy",
        True,
        srm_p_value=1e-6,
    )
    assert srm.verdict is Verdict.SRM


def test_lower_error_is_better_for_regressors() -> None:
    rng = np.random.default_rng(3)
    control = np.abs(rng.normal(0, 10, 800))
    challenger = np.abs(rng.normal(0, 7, 800))
    result = compare("a", "b", control, challenger, "mae", False, None)
    assert result.verdict is Verdict.BETTER
    assert result.difference.estimate < 0


def test_difference_interval_does_not_collapse_at_a_perfect_small_arm() -> None:
    """15 of 15 against 278 of 285: a Wald interval would exclude zero; the data do not."""
    control = [1] * 278 + [0] * 7
    result = compare("champion", "challenger", control, [1] * 15, "accuracy", True, 0.5)
    assert result.difference.low < 0 < result.difference.high
    assert result.p_value > 0.05
