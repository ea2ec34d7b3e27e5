"""Simulations (fixed seeds, hundreds of runs each) of the experiment statistics of issue 15,
generated as aggregates directly: one binomial/multinomial draw per cell, never per request.

Where a test checks that a rate is "at most alpha" for a test whose true level is exactly
alpha (chi-square SRM, Holm's fixed-horizon family), the measured rate is allowed two
Monte Carlo standard errors above alpha: with 1000 runs a level-alpha test lands above
alpha about half the time. Always-valid tests are conservative and are held to alpha itself.

One module for every statistical claim the report makes, with the simulators they share
(``simulate``, ``ramp_epochs``, ``paired_cells``): hence its length.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import chisquare
from statsmodels.stats.proportion import proportions_ztest

from raysplit.eventstore.aggregates import (
    AssignmentKind,
    Cell,
    Epoch,
    EpochUnits,
    ExperimentAggregates,
    PairedCell,
)
from serve_app.stats.common import Verdict
from serve_app.stats.experiment import experiment_statistics
from serve_app.stats.labels import label_coverage
from serve_app.stats.models import SCHEMA_VERSION, ExperimentStatistics, Metric
from serve_app.stats.multiple import holm
from serve_app.stats.paired import paired_shadow_comparison
from serve_app.stats.sample_ratio import sample_ratio_by_epoch
from serve_app.stats.settings import SRM_ALPHA
from serve_app.stats.stratified import stratified_comparison
from serve_app.stats.text import render_text

SPLIT, STICKY, FORCED = AssignmentKind.SPLIT, AssignmentKind.STICKY, AssignmentKind.FORCED
RAMP = (0.05, 0.25, 0.50, 0.90)  # the challenger's share, epoch by epoch


def at_most(rate: float, alpha: float, runs: int) -> bool:
    """``rate`` is consistent with a true rate of at most ``alpha`` (two standard errors)."""
    return rate <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)


def ramp_epochs(names: tuple[str, ...] = ("control", "challenger")) -> list[Epoch]:
    return [
        Epoch(epoch=e, shares={names[0]: 1 - s, names[1]: s}, started_at=float(e))
        for e, s in enumerate(RAMP)
    ]


def simulate(
    rng: np.random.Generator,
    shares: np.ndarray,
    per_epoch: int,
    accuracy: np.ndarray,
    buckets: int = 1,
    label_rate: float | np.ndarray = 1.0,
    error_rate: float | np.ndarray = 0.0,
    log_latency: float | np.ndarray = 3.0,
    latency_sd: float = 0.5,
    assignment: AssignmentKind = SPLIT,
    names: tuple[str, ...] = ("control", "challenger"),
) -> list[Cell]:
    """Cells of one run: ``shares`` (epochs, variants); ``accuracy``, ``label_rate``,
    ``error_rate`` and ``log_latency`` broadcast to (epochs, variants). Epoch e spans
    buckets e*buckets .. (e+1)*buckets - 1; its requests spread evenly over them."""
    epochs, variants = shares.shape
    shape = (epochs, variants)
    requests = np.stack([rng.multinomial(per_epoch, s) for s in shares])
    requests = rng.multinomial(requests.reshape(-1), np.full(buckets, 1 / buckets)).reshape(
        epochs, variants, buckets
    )
    err = np.broadcast_to(error_rate, shape)[..., None]
    errors = rng.binomial(requests, err)
    answered = requests - errors
    labelled = rng.binomial(answered, np.broadcast_to(label_rate, shape)[..., None])
    correct = rng.binomial(labelled, np.broadcast_to(accuracy, shape)[..., None])
    mu = np.broadcast_to(log_latency, shape)[..., None]
    mean = mu + latency_sd * rng.standard_normal(requests.shape) / np.sqrt(np.maximum(answered, 1))
    spread = latency_sd**2 * rng.gamma(np.maximum(answered - 1, 0) / 2, 2.0)
    cells = []
    for e in range(epochs):
        for v in range(variants):
            for b in range(buckets):
                if requests[e, v, b] == 0:
                    continue
                m = int(answered[e, v, b])
                cells.append(
                    Cell.model_construct(
                        variant=names[v],
                        epoch=e,
                        assignment=assignment,
                        bucket=e * buckets + b,
                        requests=int(requests[e, v, b]),
                        errors=int(errors[e, v, b]),
                        log_latency_sum=float(m * mean[e, v, b]),
                        log_latency_sq=float(spread[e, v, b] + m * mean[e, v, b] ** 2),
                        labelled=int(labelled[e, v, b]),
                        correct=int(correct[e, v, b]),
                        abs_error_sum=0.0,
                        abs_error_sq=0.0,
                    )
                )
    return cells


def two_arm_ramp() -> np.ndarray:
    s = np.array(RAMP)
    return np.stack([1 - s, s], axis=1)


# ----------------------------------------------------------------------------- SRM


def test_a_correct_router_ramped_through_four_epochs_is_not_flagged() -> None:
    """5 -> 25 -> 50 -> 90: per-epoch tests combined keep the false-alarm rate at alpha,
    and the 0.001 flag almost never fires; the all-time check against the final weights
    (the old behaviour) flags every single run."""
    rng = np.random.default_rng(15)
    runs, per_epoch = 1000, 5000
    shares = two_arm_ramp()
    counts = rng.multinomial(per_epoch, shares, size=(runs, 4))  # (runs, epochs, 2)
    epochs = ramp_epochs()
    p_values, old = [], 0
    for run in range(runs):
        cells = [
            Cell.model_construct(
                variant=name, epoch=e, assignment=SPLIT, bucket=e, requests=int(k), errors=0
            )
            for e in range(4)
            for name, k in zip(("control", "challenger"), counts[run, e], strict=True)
        ]
        p_values.append(sample_ratio_by_epoch(cells, epochs).p_value)
        totals = counts[run].sum(axis=0)
        now = epochs[-1].shares  # the first version: all-time counts against today's weights
        expected = [now["control"] * totals.sum(), now["challenger"] * totals.sum()]
        old += chisquare(totals[:2], expected).pvalue < SRM_ALPHA
    p = np.array(p_values)
    assert at_most(float(np.mean(p < 0.05)), 0.05, runs), np.mean(p < 0.05)
    assert np.mean(p < SRM_ALPHA) <= 0.005, np.mean(p < SRM_ALPHA)
    assert old == runs


@pytest.mark.parametrize("within_ramp", [False, True])
def test_a_52_48_defect_at_20000_is_caught(within_ramp: bool) -> None:
    """52/48 against 50/50 at n = 20,000 in one epoch: flagged at 0.001 in >= 80% of runs,
    alone or as the 50/50 epoch of a correct ramp (the other epochs dilute it by 3 df)."""
    rng = np.random.default_rng(52)
    runs = 1000
    epochs = ramp_epochs() if within_ramp else [ramp_epochs()[2].model_copy(update={"epoch": 0})]
    flagged = 0
    for _ in range(runs):
        cells = []
        for e in epochs:
            p = (0.52, 0.48) if e.shares["challenger"] == 0.5 else tuple(e.shares.values())
            n = 20_000 if e.shares["challenger"] == 0.5 else 5000
            k = rng.multinomial(n, p)
            cells += [
                Cell.model_construct(
                    variant=v,
                    epoch=e.epoch,
                    assignment=SPLIT,
                    bucket=e.epoch,
                    requests=int(c),
                    errors=0,
                )
                for v, c in zip(("control", "challenger"), k, strict=True)
            ]
        flagged += sample_ratio_by_epoch(cells, epochs).flagged
    assert flagged / runs >= 0.8, flagged / runs


def test_sticky_srm_counts_users_so_heavy_users_do_not_fire_it() -> None:
    """3000 users per epoch, five of them sending 2000 requests each: the check in units
    keeps its level; the same check in requests fires most of the time."""
    rng = np.random.default_rng(7)
    runs, users = 1000, 3000
    per_user = rng.integers(1, 6, users)
    per_user[:5] = 2000
    epochs = [
        Epoch(epoch=0, shares={"control": 0.5, "challenger": 0.5}, started_at=0),
        Epoch(epoch=1, shares={"control": 0.2, "challenger": 0.8}, started_at=1),
    ]
    units_p, requests_fired = [], 0
    for _ in range(runs):
        cells, units = [], []
        for e in epochs:
            on_challenger = rng.random(users) < e.shares["challenger"]
            for name, mask in (("control", ~on_challenger), ("challenger", on_challenger)):
                units.append(EpochUnits(variant=name, epoch=e.epoch, units=int(mask.sum())))
                cells.append(
                    Cell.model_construct(
                        variant=name,
                        epoch=e.epoch,
                        assignment=STICKY,
                        bucket=e.epoch,
                        requests=int(per_user[mask].sum()),
                        errors=0,
                    )
                )
        result = sample_ratio_by_epoch(cells, epochs, units)
        assert all(s.counted_in == "units" for s in result.strata)
        units_p.append(result.p_value)
        as_split = [c.model_copy(update={"assignment": SPLIT}) for c in cells]
        requests_fired += sample_ratio_by_epoch(as_split, epochs).p_value < 0.05
    rate = float(np.mean(np.array(units_p) < 0.05))
    assert at_most(rate, 0.05, runs), rate
    assert requests_fired / runs > 0.5, requests_fired / runs


def test_sticky_cells_without_unit_counts_are_not_tested_on_requests() -> None:
    epochs = [Epoch(epoch=0, shares={"a": 0.5, "b": 0.5}, started_at=0)]
    cells = [
        Cell(variant="a", epoch=0, assignment=STICKY, bucket=0, requests=9000, errors=0),
        Cell(variant="b", epoch=0, assignment=STICKY, bucket=0, requests=1000, errors=0),
    ]
    result = sample_ratio_by_epoch(cells, epochs)
    assert result.p_value is None and not result.flagged and result.notes


def test_randomised_traffic_to_a_variant_without_share_is_an_srm() -> None:
    epochs = [Epoch(epoch=0, shares={"a": 0.5, "b": 0.5, "c": 0.0}, started_at=0)]
    cells = [
        Cell(variant=v, epoch=0, assignment=SPLIT, bucket=0, requests=k, errors=0)
        for v, k in (("a", 500), ("b", 500), ("c", 3))
    ]
    result = sample_ratio_by_epoch(cells, epochs)
    assert result.flagged and result.strata[0].unexpected == {"c": 3}


# ----------------------------------------------------------------------------- forced


def test_forced_traffic_changes_nothing_but_its_own_line() -> None:
    """Forced cells on the challenger, far more accurate and slower, with errors: every
    comparison, guardrail, SRM and coverage result is identical with or without them."""
    rng = np.random.default_rng(3)
    shares = two_arm_ramp()
    for _ in range(500):
        cells = simulate(rng, shares, 1500, np.array([[0.8, 0.82]]), buckets=2)
        forced = simulate(
            rng,
            np.array([[0.0, 1.0]] * 4),
            200,
            np.array([[0.99, 0.99]]),
            buckets=2,
            error_rate=0.2,
            log_latency=6.0,
            assignment=FORCED,
        )
        base = ExperimentAggregates(
            experiment="x",
            classification=True,
            control="control",
            bucket_s=60,
            cells=cells,
            epochs=ramp_epochs(),
        )
        mixed = base.model_copy(update={"cells": cells + forced})
        plain, with_forced = experiment_statistics(base), experiment_statistics(mixed)
        assert plain.model_dump(exclude={"forced"}) == with_forced.model_dump(exclude={"forced"})
        assert not plain.forced
        assert [f.variant for f in with_forced.forced] == ["challenger"]
        assert with_forced.forced[0].requests == sum(c.requests for c in forced)


# ----------------------------------------------------------------------------- effects


def test_stratified_interval_covers_under_a_moving_base_rate_and_pooled_does_not() -> None:
    """Base accuracy 0.60 -> 0.70 -> 0.80 -> 0.90 while the challenger ramps 5 -> 90%,
    true difference +0.03 in every epoch: the pooled difference is inflated (the
    challenger mostly saw the easy epochs), the stratified one covers at its nominal rate."""
    rng = np.random.default_rng(1949)
    runs, truth = 1000, 0.03
    base = np.array([0.60, 0.70, 0.80, 0.90])
    accuracy = np.stack([base, base + truth], axis=1)
    stratified = pooled = 0
    for _ in range(runs):
        cells = simulate(rng, two_arm_ramp(), 4000, accuracy)
        result = stratified_comparison(cells, "control", "challenger", Metric.ACCURACY)
        d, p = result.difference, result.pooled_difference
        stratified += d.low <= truth <= d.high
        pooled += p.low <= truth <= p.high
    assert stratified / runs >= 0.93, stratified / runs
    assert pooled / runs < 0.80, pooled / runs


def test_a_a_fixed_horizon_and_always_valid_rates_under_a_ramp() -> None:
    """A/A under the same moving ramp, five buckets per epoch: the stratified fixed-horizon
    test rejects 3-7%; the always-valid p-value, looked at every bucket boundary, at most 5%."""
    rng = np.random.default_rng(2015)
    runs = 1000
    base = np.array([0.60, 0.70, 0.80, 0.90])
    accuracy = np.stack([base, base], axis=1)
    fixed = always = 0
    for _ in range(runs):
        cells = simulate(rng, two_arm_ramp(), 3000, accuracy, buckets=5)
        result = stratified_comparison(cells, "control", "challenger", Metric.ACCURACY)
        assert result.looks >= 15
        fixed += result.p_value < 0.05
        always += result.always_valid_p_value < 0.05
    assert 0.03 <= fixed / runs <= 0.07, fixed / runs
    assert always / runs <= 0.05, always / runs


def test_holm_keeps_the_family_wise_rate_with_three_challengers() -> None:
    """A/A/A/A, three challengers against one control over the ramp: unadjusted, some
    comparison rejects far more often than alpha; Holm-adjusted, the family-wise rate of
    the fixed-horizon and of the always-valid p-values stays at alpha."""
    rng = np.random.default_rng(4)
    runs = 800
    names = ("control", "b", "c", "d")
    s = np.array(RAMP)[:, None] / 3
    shares = np.concatenate([1 - 3 * s, s, s, s], axis=1)
    epochs = [
        Epoch(epoch=e, shares=dict(zip(names, shares[e].tolist(), strict=True)), started_at=e)
        for e in range(4)
    ]
    raw = fixed = always = 0
    for _ in range(runs):
        cells = simulate(rng, shares, 4000, np.full((1, 4), 0.8), buckets=3, names=names)
        result = experiment_statistics(
            ExperimentAggregates(
                experiment="x",
                classification=True,
                control="control",
                bucket_s=60,
                cells=cells,
                epochs=epochs,
            )
        )
        raw += any(c.p_value < 0.05 for c in result.comparisons)
        fixed += any(c.adjusted_p_value < 0.05 for c in result.comparisons)
        always += any(c.adjusted_always_valid_p_value < 0.05 for c in result.comparisons)
    assert raw / runs > 0.08, raw / runs
    assert at_most(fixed / runs, 0.05, runs), fixed / runs
    assert always / runs <= 0.05, always / runs


def test_a_five_point_accuracy_gain_is_detected() -> None:
    """0.80 -> 0.85 with about 3000 labelled per arm over two 50/50 epochs: fixed-horizon
    rejects and the always-valid verdict says "challenger better" most of the time."""
    rng = np.random.default_rng(85)
    runs = 500
    shares = np.array([[0.5, 0.5], [0.5, 0.5]])
    fixed = better = 0
    for _ in range(runs):
        cells = simulate(rng, shares, 3000, np.array([[0.80, 0.85]]), buckets=4)
        result = stratified_comparison(cells, "control", "challenger", Metric.ACCURACY)
        fixed += result.p_value < 0.05
        better += result.verdict is Verdict.BETTER
    assert fixed / runs >= 0.95, fixed / runs
    assert better / runs >= 0.80, better / runs


def test_one_stratum_matches_the_two_proportion_z_test() -> None:
    cells = [
        Cell(
            variant=variant,
            epoch=0,
            assignment=SPLIT,
            bucket=0,
            requests=n,
            errors=0,
            labelled=n,
            correct=correct,
        )
        for variant, n, correct in (("a", 80, 48), ("b", 70, 56))
    ]
    result = stratified_comparison(cells, "a", "b", Metric.ACCURACY, min_samples=2)
    assert result.difference.estimate == pytest.approx(0.2)
    assert result.p_value == pytest.approx(proportions_ztest([56, 48], [70, 80])[1])
    assert result.pooled_difference == result.difference


def test_mae_from_sums_matches_welch_on_the_rows() -> None:
    rng = np.random.default_rng(9)
    rows = {"a": np.abs(rng.normal(0, 3, 400)), "b": np.abs(rng.normal(0, 3.3, 300))}
    cells = [
        Cell(
            variant=v,
            epoch=0,
            assignment=SPLIT,
            bucket=0,
            requests=len(x),
            errors=0,
            labelled=len(x),
            abs_error_sum=float(x.sum()),
            abs_error_sq=float((x**2).sum()),
        )
        for v, x in rows.items()
    ]
    result = stratified_comparison(cells, "a", "b", Metric.MAE)
    welch = stats.ttest_ind(rows["b"], rows["a"], equal_var=False)
    assert result.difference.estimate == pytest.approx(rows["b"].mean() - rows["a"].mean())
    assert result.p_value == pytest.approx(welch.pvalue, rel=0.02)  # normal vs t, df ~ 650
    assert result.higher_is_better is False


def test_min_samples_is_respected_by_the_always_valid_test() -> None:
    cells = simulate(
        np.random.default_rng(1), np.array([[0.5, 0.5]]), 150, np.array([[0.2, 0.9]]), buckets=3
    )
    few = stratified_comparison(cells, "control", "challenger", Metric.ACCURACY, min_samples=100)
    assert few.looks == 0 and few.always_valid_p_value is None
    assert few.verdict is Verdict.NOT_ENOUGH_DATA and few.p_value < 1e-6
    some = stratified_comparison(cells, "control", "challenger", Metric.ACCURACY, min_samples=20)
    assert some.looks == 3 and some.always_valid_p_value < 0.05


# ----------------------------------------------------------------------------- labels


def test_label_coverage_stratified_keeps_its_level_while_labels_lag_over_a_ramp() -> None:
    """Coverage 90% in old epochs, 30% in the newest (labels not in yet) while the
    challenger's share grows: no difference within epochs, so the stratified test fires at
    its level; when the challenger loses labels more often, it fires."""
    rng = np.random.default_rng(21)
    runs = 500
    lag = np.array([0.9, 0.9, 0.8, 0.3])[:, None]
    same = biased = 0
    for _ in range(runs):
        cells = simulate(rng, two_arm_ramp(), 4000, np.array([[0.8, 0.8]]), label_rate=lag)
        same += label_coverage(cells).p_value < 0.05
        worse = lag * np.array([[1.0, 0.93]])
        cells = simulate(rng, two_arm_ramp(), 4000, np.array([[0.8, 0.8]]), label_rate=worse)
        biased += label_coverage(cells).flagged
    assert at_most(same / runs, 0.05, runs), same / runs
    assert biased / runs >= 0.8, biased / runs


def test_label_coverage_and_delay_are_reported() -> None:
    cells = [
        Cell(
            variant="a", epoch=0, assignment=SPLIT, bucket=0, requests=110, errors=10, labelled=50
        ),
        Cell(
            variant="s",
            epoch=0,
            assignment=AssignmentKind.SHADOW,
            bucket=0,
            requests=100,
            errors=0,
            labelled=40,
        ),
    ]
    result = label_coverage(cells, [1.0, 2.0, 3.0, 100.0], live=["a"])
    coverage = {v.variant: (v.coverage, v.live) for v in result.variants}
    assert coverage == {"a": (0.5, True), "s": (0.4, False)}
    assert result.delay.median_s == 2.5 and result.delay.p95_s == pytest.approx(85.45)


# ----------------------------------------------------------------------------- shadows


def paired_cells(rng: np.random.Generator, pairs: int, probs: list[float], buckets: int):
    counts = rng.multinomial(pairs // buckets, probs, size=buckets)
    return [
        PairedCell(
            shadow="s",
            epoch=0,
            bucket=b,
            pairs=int(k.sum()),
            both_correct=int(k[0]),
            live_only=int(k[1]),
            shadow_only=int(k[2]),
            neither=int(k[3]),
        )
        for b, k in enumerate(counts)
    ]


def test_mcnemar_a_a_rates_large_and_exact() -> None:
    """Shadow and live equally accurate with 200 expected discordant pairs: McNemar
    rejects 3-7%; with ~6 discordant pairs the exact binomial is used and stays <= 5%; the
    always-valid paired p-value stays <= 5% across ten looks."""
    rng = np.random.default_rng(77)
    runs = 1000
    large = small = always = 0
    for _ in range(runs):
        cells = paired_cells(rng, 2000, [0.75, 0.05, 0.05, 0.15], buckets=10)
        result = paired_shadow_comparison(cells, "s", classification=True)
        assert not result.exact
        large += result.p_value < 0.05
        always += result.always_valid_p_value < 0.05
        few = paired_shadow_comparison(
            paired_cells(rng, 100, [0.8, 0.03, 0.03, 0.14], buckets=2), "s", True
        )
        assert few.exact
        small += few.p_value < 0.05
    assert 0.03 <= large / runs <= 0.07, large / runs
    assert small / runs <= 0.05, small / runs
    assert always / runs <= 0.05, always / runs


def test_paired_t_a_a_rate_for_regressors() -> None:
    rng = np.random.default_rng(78)
    runs, n = 1000, 800
    mean = rng.normal(0, 2 / math.sqrt(n), (runs, 1))
    spread = 4 * rng.chisquare(n - 1, (runs, 1))
    rejected = 0
    for run in range(runs):
        cell = PairedCell(
            shadow="s",
            epoch=0,
            bucket=0,
            pairs=n,
            diff_sum=float(n * mean[run, 0]),
            diff_sq=float(spread[run, 0] + n * mean[run, 0] ** 2),
        )
        rejected += paired_shadow_comparison([cell], "s", classification=False).p_value < 0.05
    assert 0.03 <= rejected / runs <= 0.07, rejected / runs


def test_a_better_shadow_gets_a_paired_verdict_with_its_interval() -> None:
    rng = np.random.default_rng(5)
    cells = paired_cells(rng, 3000, [0.72, 0.03, 0.10, 0.15], buckets=6)
    result = paired_shadow_comparison(cells, "s", classification=True)
    assert result.verdict is Verdict.BETTER
    assert result.difference.low < 0.07 < result.difference.high


# ----------------------------------------------------------------------------- guardrails


def test_a_rare_error_rate_waits_for_events_not_requests() -> None:
    """0.5% errors in both arms, read at 100 looks from the first requests: the always-valid
    guardrail looks only once each arm expects 10 errors (about 2,000 requests, not 100),
    and fires in <= 5% of 600 A/A runs."""
    rng = np.random.default_rng(34)
    runs, fired = 600, 0
    for _ in range(runs):
        cells = simulate(
            rng,
            np.array([[0.5, 0.5]]),
            40_000,
            np.array([[0.8, 0.8]]),
            buckets=100,
            error_rate=0.005,
        )
        result = stratified_comparison(cells, "control", "challenger", Metric.ERROR_RATE)
        assert result.looks <= 95  # the first looks (200 requests each) have too few errors
        fired += result.always_valid_p_value < 0.05
    assert at_most(fired / runs, 0.05, runs) and fired / runs <= 0.05, fired


def test_guardrails_a_a_rates_and_a_slower_challenger() -> None:
    """Error rate (2%) and log latency equal in both arms over the ramp: each fixed-horizon
    test rejects 3-7%, each always-valid one at most 5%."""
    rng = np.random.default_rng(99)
    runs = 800
    rates = {Metric.ERROR_RATE: [0, 0], Metric.LOG_LATENCY: [0, 0]}
    for _ in range(runs):
        cells = simulate(
            rng, two_arm_ramp(), 3000, np.array([[0.8, 0.8]]), buckets=4, error_rate=0.02
        )
        for metric, tally in rates.items():
            result = stratified_comparison(cells, "control", "challenger", metric)
            tally[0] += result.p_value < 0.05
            tally[1] += result.always_valid_p_value < 0.05
    for metric, (fixed, always) in rates.items():
        assert 0.03 <= fixed / runs <= 0.07, (metric, fixed / runs)
        assert always / runs <= 0.05, (metric, always / runs)


def test_as_accurate_but_slower_is_a_verdict() -> None:
    rng = np.random.default_rng(2)
    cells = simulate(
        rng,
        np.array([[0.5, 0.5]] * 2),
        20_000,
        np.array([[0.8, 0.8]]),
        buckets=3,
        log_latency=np.array([[3.0, 3.0 + math.log(2)]]),
    )
    aggregates = ExperimentAggregates(
        experiment="x",
        classification=True,
        control="control",
        bucket_s=60,
        cells=cells,
        epochs=[
            Epoch(epoch=e, shares={"control": 0.5, "challenger": 0.5}, started_at=e)
            for e in range(2)
        ],
        label_delay_s=[5.0, 7.0],
    )
    result = experiment_statistics(aggregates)
    summary = result.summaries[0]
    assert summary.quality is Verdict.NO_DIFFERENCE and summary.latency is Verdict.WORSE
    assert summary.summary.startswith("as accurate but slower (2.0")
    latency = next(g for g in result.guardrails if g.metric is Metric.LOG_LATENCY)
    assert latency.ratio.low < 2 < latency.ratio.high


# ----------------------------------------------------------------------------- the whole


def test_holm_matches_the_textbook_and_skips_missing() -> None:
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])


def test_the_result_renders_as_json_and_text() -> None:
    rng = np.random.default_rng(8)
    cells = simulate(rng, two_arm_ramp(), 2000, np.array([[0.8, 0.8]]), buckets=2)
    cells.append(
        Cell(
            variant="challenger",
            epoch=3,
            assignment=FORCED,
            bucket=7,
            requests=5,
            errors=0,
            labelled=5,
            correct=5,
        )
    )
    aggregates = ExperimentAggregates(
        experiment="x",
        classification=True,
        control="control",
        bucket_s=60,
        cells=cells,
        epochs=ramp_epochs(),
        paired=paired_cells(rng, 1000, [0.7, 0.1, 0.1, 0.1], 2),
    )
    result = experiment_statistics(aggregates)
    assert result.schema_version == SCHEMA_VERSION
    assert ExperimentStatistics.model_validate(json.loads(result.model_dump_json())) == result
    text = render_text(result)
    assert "forced (not compared): challenger 5 requests" in text
    assert "shadow s paired accuracy" in text and "SRM: always-valid p = " in text


@pytest.mark.parametrize("rates", [(0.8, 0.85), (0.97, 0.92), (0.5, 0.52), None])
def test_the_closed_form_sample_size_is_statsmodels_root(rates: tuple | None) -> None:
    """One implementation of the sample sizes (serve_app.stats.common), in closed form: the
    fixed horizon equals statsmodels' normal-power root, and the sequential size is the
    smallest n at which the mSPRT's power reaches 80%."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    from serve_app.stats.common import (
        fixed_horizon_n,
        fixed_horizon_sample_size,
        sequential_power,
        sequential_sample_size,
    )
    from serve_app.stats.settings import ALPHA, POWER

    if rates is None:
        sd, effect = 2.0, 0.3
        size = effect / sd
        assert fixed_horizon_sample_size(sd, sd, effect) == fixed_horizon_n(size)
        variance = 2 * sd**2
    else:
        p2, p1 = rates
        effect = abs(p2 - p1)
        size = abs(proportion_effectsize(p2, p1))
        assert fixed_horizon_sample_size(0, 0, effect, (p2, p1)) == fixed_horizon_n(size)
        variance = p1 * (1 - p1) + p2 * (1 - p2)
    root = NormalIndPower().solve_power(size, alpha=ALPHA, power=POWER, ratio=1.0)
    assert fixed_horizon_n(size) == math.ceil(root)
    n = sequential_sample_size(variance, effect, effect**2)
    assert sequential_power(n, variance, effect, effect**2) >= POWER
    assert sequential_power(n - 1, variance, effect, effect**2) < POWER
