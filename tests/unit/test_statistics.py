import numpy as np
import pytest
from scipy import stats

from serve_app.statistics import (
    SRM_ALPHA,
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


def test_srm_flags_52_48_at_20000_and_passes_a_true_even_split() -> None:
    shares = {"champion": 0.5, "challenger": 0.5}
    assert sample_ratio_p_value({"champion": 10_400, "challenger": 9_600}, shares) < SRM_ALPHA
    rng = np.random.default_rng(5)
    passed = [
        sample_ratio_p_value(
            dict(zip(shares, np.bincount(rng.integers(0, 2, 20_000)).tolist(), strict=True)),
            shares,
        )
        >= SRM_ALPHA
        for _ in range(200)
    ]
    assert sum(passed) >= 199  # alpha 0.001: a false alarm in 200 true splits is rare


def test_results_match_scipy_and_statsmodels_on_hand_checked_cases() -> None:
    """Newcombe (1998) example: 56/70 vs 48/80, method 10 interval 0.0524 to 0.3339."""
    control, challenger = [1] * 48 + [0] * 32, [1] * 56 + [0] * 14
    result = compare("a", "b", control, challenger, "accuracy", True, None, min_samples=2)
    assert result.difference.estimate == pytest.approx(0.2)
    assert (result.difference.low, result.difference.high) == pytest.approx(
        (0.0524, 0.3339), abs=1e-4
    )
    chi2 = stats.chi2_contingency([[56, 14], [48, 32]], correction=False)
    assert result.p_value == pytest.approx(chi2.pvalue)  # pooled z-test: z^2 is chi-square
    rng = np.random.default_rng(4)
    errors_a, errors_b = np.abs(rng.normal(0, 3, 120)), np.abs(rng.normal(0, 4, 90))
    welch = compare("a", "b", errors_a, errors_b, "mae", False, None, min_samples=2)
    assert welch.p_value == pytest.approx(stats.ttest_ind(errors_b, errors_a, equal_var=False)[1])


def test_a_a_false_positive_rates_over_1000_experiments() -> None:
    """1000 A/A experiments of 2000 per arm at 80% accuracy: the fixed-horizon z-test
    looked at once rejects about alpha of them; the always-valid p-value, looked at after
    every observation, stays under alpha. A t-test looked at every 40 does not."""
    rng = np.random.default_rng(2026)
    fixed = sequential = peeking = 0
    runs, n = 1000, 2000
    for run in range(runs):
        a, b = rng.binomial(1, 0.8, n), rng.binomial(1, 0.8, n)
        fixed += compare("a", "b", a, b, "accuracy", True, None).p_value < 0.05
        sequential += always_valid_p_value(a, b, tau2=0.05**2) < 0.05
        if run < 200:
            peeking += any(
                stats.ttest_ind(a[:k], b[:k]).pvalue < 0.05 for k in range(40, n + 1, 40)
            )
    assert 0.03 <= fixed / runs <= 0.07
    assert sequential / runs <= 0.05
    assert peeking / 200 > 0.15


def test_a_small_near_perfect_arm_does_not_fake_significance() -> None:
    """A/A at 97% accuracy split 90/10: each arm's own variance is zero while it is
    perfect so far; the pooled variance keeps the watched p-value honest."""
    rng = np.random.default_rng(11)
    runs = 1000
    hits = sum(
        always_valid_p_value(rng.binomial(1, 0.97, 4500), rng.binomial(1, 0.97, 500), 0.05**2)
        < 0.05
        for _ in range(runs)
    )
    assert hits / runs <= 0.05


def test_power_at_the_sample_size_the_report_asks_for() -> None:
    """A true five-point gain (80% -> 85%): at the reported sequential sample size the
    verdict's test detects it in at least 80% of 1000 experiments, and the fixed-horizon
    figure gives the z-test its planned 80% (within simulation noise)."""
    rng = np.random.default_rng(17)
    planned = compare(
        "a", "b", rng.binomial(1, 0.8, 200_000), [1, 0], "accuracy", True, None
    ).sample_size
    assert planned.min_detectable_effect == 0.05
    runs = 1000
    detected = fixed = 0
    for _ in range(runs):
        a, b = rng.binomial(1, 0.8, planned.sequential), rng.binomial(1, 0.85, planned.sequential)
        detected += compare("a", "b", a, b, "accuracy", True, None).verdict is Verdict.BETTER
        a, b = (
            rng.binomial(1, 0.8, planned.fixed_horizon),
            rng.binomial(1, 0.85, planned.fixed_horizon),
        )
        fixed += compare("a", "b", a, b, "accuracy", True, None).p_value < 0.05
    assert detected / runs >= 0.8
    assert 0.77 <= fixed / runs <= 0.85


@pytest.mark.parametrize(
    ("p_control", "p_challenger", "verdict"),
    [(0.7, 0.9, Verdict.BETTER), (0.9, 0.7, Verdict.WORSE), (0.8, 0.8, Verdict.NO_DIFFERENCE)],
)
def test_accuracy_verdicts(p_control: float, p_challenger: float, verdict: Verdict) -> None:
    rng = np.random.default_rng(1)
    control = rng.binomial(1, p_control, 3000)
    challenger = rng.binomial(1, p_challenger, 3000)
    result = compare("champion", "challenger", control, challenger, "accuracy", True, 0.5)
    assert result.verdict is verdict
    assert result.difference.low < p_challenger - p_control < result.difference.high


def test_not_enough_data_and_srm_come_first() -> None:
    small = compare("a", "b", [1, 0, 1], [1, 1, 1], "accuracy", True, 0.5)
    assert small.verdict is Verdict.NOT_ENOUGH_DATA
    rng = np.random.default_rng(1)
    same = rng.binomial(1, 0.8, 1000), rng.binomial(1, 0.8, 1000)
    underpowered = compare("a", "b", *same, "accuracy", True, 0.5)
    assert underpowered.sample_size.sequential > 1000  # too few to rule out 5 points
    assert underpowered.verdict is Verdict.NOT_ENOUGH_DATA
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
