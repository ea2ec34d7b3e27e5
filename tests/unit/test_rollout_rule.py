"""The rollout's config and decision rule (issue 16): validation, a hand case per decision,
and simulations with fixed seeds of the rule's error rates over whole rollouts.

Run with ``-s`` to see each simulation's rates and the expected labelled samples to a
decision (the figures the docs quote). The hand cases and the simulations share one
config and its fixtures, so they stay in one module of about 500 lines.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from raysplit.eventstore.aggregates import AssignmentKind, Cell, Epoch, ExperimentAggregates
from serve_app.config.rollout import Guardrails, RolloutConfig
from serve_app.rollout.rule import Decision, DecisionKind, decide
from serve_app.stats.common import sequential_sample_size
from serve_app.stats.models import Metric
from serve_app.stats.stratified import stratified_comparison, stratified_looks

CONTROL, CANDIDATE = "control", "challenger"
DESIGN = {
    "candidate": CANDIDATE,
    "steps": [5, 25, 50],
    "min_scored_per_step": 200,
    "min_step_s": 60,
    "non_inferiority_margin": 0.02,
    "guardrails": {"max_error_rate_increase": 0.01, "max_p95_latency_ratio": 1.5, "max_psi": 0.25},
    "on_success": "promote",
    "evaluation_interval_s": 10,
}
CONFIG = RolloutConfig.model_validate(DESIGN)


# --- config ---------------------------------------------------------------------------------


def test_design_block_validates() -> None:
    assert CONFIG.steps == [5, 25, 50]
    assert CONFIG.last_step == 2
    assert CONFIG.guardrails == Guardrails()
    assert RolloutConfig(candidate="b", steps=[100]).on_success == "promote"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": []}, "steps must list at least one share"),
        ({"steps": [5, 5, 50]}, r"strictly increasing; step 2 \(5%\) does not exceed step 1"),
        ({"steps": [25, 5]}, r"step 2 \(5%\) does not exceed step 1 \(25%\)"),
        ({"steps": [0, 50]}, r"step 1 is 0%; each step must be in \(0, 100\]"),
        ({"steps": [50, 101]}, r"step 2 is 101%"),
        ({"steps": list(range(1, 12))}, "steps lists 11 shares; at most 10"),
        ({"non_inferiority_margin": 1}, "non_inferiority_margin\n  Input should be less than 1"),
        ({"non_inferiority_margin": -0.1}, "greater than or equal to 0"),
        ({"min_scored_per_step": 0}, "min_scored_per_step\n  Input should be greater than 0"),
        ({"min_step_s": 0}, "min_step_s\n  Input should be greater than 0"),
        ({"evaluation_interval_s": -1}, "evaluation_interval_s\n  Input should be greater"),
        ({"on_success": "rollback"}, "on_success\n  Input should be 'promote' or 'hold'"),
        ({"candidate": "Bad Name"}, "candidate\n  String should match pattern"),
        ({"weights": {}}, "weights\n  Extra inputs are not permitted"),
        ({"guardrails": {"max_latency": 2}}, "guardrails.max_latency\n  Extra inputs"),
        ({"guardrails": {"max_p95_latency_ratio": 0.5}}, "greater than or equal to 1"),
        ({"guardrails": {"max_error_rate_increase": 1.5}}, "max_error_rate_increase\n  Input"),
        ({"guardrails": {"max_psi": 0}}, "max_psi\n  Input should be greater than 0"),
    ],
)
def test_config_refused_with_a_precise_message(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutConfig.model_validate({**DESIGN, **change})


def test_guardrails_can_be_turned_off() -> None:
    off = Guardrails(max_error_rate_increase=None, max_p95_latency_ratio=None, max_psi=None)
    assert off.max_psi is None


# --- hand cases -----------------------------------------------------------------------------

LOG_MU, LOG_SD = math.log(20.0), 0.5


def cell(
    variant: str,
    n: int,
    correct: int,
    epoch: int = 0,
    bucket: int = 0,
    errors: int = 0,
    latency_factor: float = 1.0,
    abs_error: float | None = None,
) -> Cell:
    answered = n - errors
    mu = LOG_MU + math.log(latency_factor)
    return Cell.model_construct(
        variant=variant,
        epoch=epoch,
        assignment=AssignmentKind.SPLIT,
        bucket=bucket,
        requests=n,
        errors=errors,
        log_latency_sum=answered * mu,
        log_latency_sq=answered * (mu**2 + LOG_SD**2),
        labelled=answered,
        correct=correct,
        abs_error_sum=0.0 if abs_error is None else answered * abs_error,
        abs_error_sq=0.0 if abs_error is None else answered * 1.04 * abs_error**2,  # sd 0.2x
    )


def aggregates(cells: list[Cell], shares: list[float], classification: bool = True):
    epochs = [
        Epoch(epoch=i, shares={CONTROL: 1 - s / 100, CANDIDATE: s / 100}, started_at=100.0 * i)
        for i, s in enumerate(shares)
    ]
    return ExperimentAggregates.model_construct(
        experiment="e",
        classification=classification,
        control=CONTROL,
        bucket_s=10.0,
        cells=cells,
        epochs=epochs,
        units=[],
        paired=[],
        label_delay_s=[],
    )


def one_step(
    share: float,
    n: int,
    control_acc: float = 0.85,
    candidate_acc: float = 0.85,
    buckets: int = 4,
    control_abs_error: float | None = None,
    **candidate: object,
) -> list[Cell]:
    """``n`` requests per bucket split by ``share`` percent, in epoch 0."""
    nb = round(n * share / 100)
    na = n - nb
    return [
        c
        for b in range(buckets)
        for c in (
            cell(CONTROL, na, round(na * control_acc), bucket=b, abs_error=control_abs_error),
            cell(CANDIDATE, nb, round(nb * candidate_acc), bucket=b, **candidate),
        )
    ]


def evaluate(
    cells: list[Cell],
    shares: list[float],
    step: int = 0,
    elapsed: float = 120.0,
    config: RolloutConfig = CONFIG,
    classification: bool = True,
    psi: float | None = None,
) -> Decision:
    started = 100.0 * step
    agg = aggregates(cells, shares, classification)
    return decide(config, step, started, started + elapsed, agg, candidate_psi=psi)


def test_hold_until_the_steps_labelled_minimum_is_in() -> None:
    d = evaluate(one_step(5, 1000, buckets=3), [5])  # 150 labelled of the candidate
    assert d.kind is DecisionKind.HOLD
    assert "150 of 200 labelled requests of 'challenger'" in d.reason
    assert d.figures.candidate_labelled == 150 and d.share_after == 5


def test_hold_until_the_steps_time_is_in() -> None:
    d = evaluate(one_step(5, 2000), [5], elapsed=30)
    assert d.kind is DecisionKind.HOLD
    assert "30 of 60 s" in d.reason and "labelled" not in d.reason


def test_advance_when_the_minimum_is_in_and_nothing_is_wrong() -> None:
    d = evaluate(one_step(5, 2000), [5])
    assert d.kind is DecisionKind.ADVANCE, d.reason
    assert (d.share, d.share_after) == (5, 25)
    f = d.figures
    assert f.candidate_labelled == 400 and f.control_labelled == 7600
    assert f.inferiority_p_value == 1.0 and f.srm_flagged is False
    assert f.latency_ratio == pytest.approx(1.0) and f.error_rate_increase == 0.0


def test_only_the_current_steps_epochs_count_towards_its_minimum() -> None:
    later = [cell(CONTROL, 75, 64, epoch=1, bucket=20), cell(CANDIDATE, 25, 21, epoch=1, bucket=20)]
    cells = [*one_step(5, 2000), *later]
    d = evaluate(cells, [5, 25], step=1)
    assert d.kind is DecisionKind.HOLD
    assert d.figures.candidate_labelled == 25 and d.figures.candidate_labelled_total == 425


def test_rollback_when_worse_even_before_the_minimum() -> None:
    d = evaluate(one_step(50, 400, candidate_acc=0.6), [5], elapsed=20)
    assert d.kind is DecisionKind.ROLLBACK and d.share_after == 0
    assert "worse than the control on accuracy" in d.reason
    assert d.figures.inferiority_p_value < 0.02 and d.figures.difference == pytest.approx(-0.25)


def test_rollback_on_an_error_rate_breach() -> None:
    d = evaluate(one_step(50, 1000, errors=50), [50])  # candidate fails 10%
    assert d.kind is DecisionKind.ROLLBACK
    assert d.reason.startswith("error-rate guardrail breached")
    assert d.figures.error_rate_increase == pytest.approx(0.1)


def test_rollback_on_a_latency_breach() -> None:
    d = evaluate(one_step(50, 1000, latency_factor=2.0), [50])
    assert d.kind is DecisionKind.ROLLBACK
    assert d.reason.startswith("latency guardrail breached: latency ratio 2")
    assert d.figures.latency_ratio == pytest.approx(2.0)


def test_guardrails_turned_off_do_not_roll_back() -> None:
    off = CONFIG.model_copy(
        update={"guardrails": Guardrails(max_error_rate_increase=None, max_p95_latency_ratio=None)}
    )
    d = evaluate(one_step(5, 2000, latency_factor=2.0, errors=5), [5], config=off)
    assert d.kind is DecisionKind.ADVANCE
    assert d.figures.latency_p_value is None and d.figures.latency_ratio == pytest.approx(2.0)


def test_rollback_on_psi_once_the_minimum_is_in() -> None:
    assert evaluate(one_step(5, 1000, buckets=3), [5], psi=0.4).kind is DecisionKind.HOLD
    d = evaluate(one_step(5, 2000), [5], psi=0.4)
    assert d.kind is DecisionKind.ROLLBACK and "PSI 0.4 > 0.25" in d.reason
    assert evaluate(one_step(5, 2000), [5], psi=0.1).kind is DecisionKind.ADVANCE


def test_rollback_on_a_sample_ratio_mismatch_when_the_step_would_pass() -> None:
    d = evaluate(one_step(50, 1000), [5])  # configured 5%, served 50%
    assert d.kind is DecisionKind.ROLLBACK
    assert d.reason.startswith("sample-ratio mismatch") and d.figures.srm_flagged


def test_promote_at_the_last_step_when_shown_non_inferior() -> None:
    d = evaluate(one_step(50, 4000, buckets=5), [50], step=0, config=_single_step())
    assert d.kind is DecisionKind.PROMOTE, d.reason
    assert d.figures.non_inferiority_p_value < 0.05 and d.figures.margin == 0.02


def test_last_step_holds_while_non_inferiority_is_not_shown() -> None:
    d = evaluate(one_step(50, 500), [50], config=_single_step())
    assert d.kind is DecisionKind.HOLD
    assert "non-inferiority within 0.02 not shown yet" in d.reason
    assert d.figures.non_inferiority_p_value >= 0.05


def test_hold_when_the_minimum_is_in_but_too_few_to_compare() -> None:
    few = CONFIG.model_copy(update={"min_scored_per_step": 10})
    d = evaluate(one_step(5, 400, buckets=1), [5], config=few)
    assert d.kind is DecisionKind.HOLD and "too few labelled requests" in d.reason


def test_regressors_use_mae_with_a_relative_margin() -> None:
    cfg = _single_step()
    good = one_step(50, 4000, buckets=5, abs_error=1.0, control_abs_error=1.0)
    d = evaluate(good, [50], config=cfg, classification=False)
    assert d.kind is DecisionKind.PROMOTE and d.figures.metric == "mae"
    assert d.figures.margin == pytest.approx(0.02)  # 2% of the control's MAE of 1.0
    bad = one_step(50, 4000, buckets=5, abs_error=1.5, control_abs_error=1.0)
    d = evaluate(bad, [50], config=cfg, classification=False)
    assert d.kind is DecisionKind.ROLLBACK and "worse than the control on mae" in d.reason


def test_bad_arguments_are_refused() -> None:
    agg = aggregates(one_step(5, 100), [5])
    with pytest.raises(ValueError, match="outside the rollout's 3 steps"):
        decide(CONFIG, 3, 0, 1, agg)
    with pytest.raises(ValueError, match="cannot be its own control"):
        decide(CONFIG, 0, 0, 1, agg, control=CANDIDATE)


def test_stratified_looks_agree_with_the_report() -> None:
    later = [
        cell(CONTROL, 500, 420, epoch=1, bucket=9),
        cell(CANDIDATE, 500, 440, epoch=1, bucket=9),
    ]
    cells = [*one_step(5, 2000), *later]
    for metric in Metric:
        looks = stratified_looks(cells, CONTROL, CANDIDATE, metric)
        report = stratified_comparison(cells, CONTROL, CANDIDATE, metric)
        assert looks is not None and len(looks.buckets) == 5
        assert looks.estimate[-1] == pytest.approx(report.difference.estimate)
        assert looks.control_n[-1] == report.control_n
    assert stratified_looks(cells, CONTROL, "nobody", Metric.ACCURACY).challenger_n[-1] == 0
    assert stratified_looks([], CONTROL, CANDIDATE, Metric.ACCURACY) is None


def _single_step() -> RolloutConfig:
    return CONFIG.model_copy(update={"steps": [50.0]})


# --- simulations ----------------------------------------------------------------------------

RUNS = 500
RATE = 500  # requests per evaluation interval (50/s), every one labelled
BUCKET_S = 60.0  # aggregates' bucket; the mSPRT looks at bucket boundaries
BASE_ACCURACY, BASE_ERROR_RATE = 0.85, 0.005


def _step_traffic(share: float, config: RolloutConfig = CONFIG) -> int:
    """Requests a step takes at RATE before its minimum (labelled and time) is in."""
    intervals = max(
        math.ceil(config.min_scored_per_step / (RATE * share / 100)),
        math.ceil(config.min_step_s / config.evaluation_interval_s),
    )
    return intervals * RATE


# The planned sample size of a +5-point candidate (90% against 85%): every step's minimum,
# and at the last (50%) step at least the per-arm n at which the non-inferiority mSPRT has
# 80% power for 0.05 + margin (earlier steps' data only add to it). At RATE this is
# 4000 + 3000 + max(3000, 2 * 800) = 10 000 requests; case (c)'s cap adds one interval's
# traffic per step for the randomness of arrivals: 11 500.
PLANNED_N = sequential_sample_size(
    BASE_ACCURACY * (1 - BASE_ACCURACY) + 0.9 * 0.1, 0.05 + CONFIG.non_inferiority_margin, 0.02**2
)
PLANNED = sum(_step_traffic(s) for s in CONFIG.steps[:-1]) + max(
    _step_traffic(CONFIG.steps[-1]), 2 * PLANNED_N
)
CAP_PLANNED = PLANNED + RATE * len(CONFIG.steps)
CAP_LONG = 40_000  # cases (a), (b), (d): twice what an equal candidate needs to be promoted


@dataclass
class Outcome:
    promoted: float
    rolled_back: float
    undecided: float
    labelled_to_decision: float  # mean over runs that decided
    labelled_mean: float  # mean over all runs (undecided ones at the cap)
    rollback_reasons: dict[str, int]  # first words of the reasons


def simulate(
    seed: int,
    cap: int,
    accuracy: float = BASE_ACCURACY,
    error_rate: float = BASE_ERROR_RATE,
    latency_factor: float = 1.0,
    runs: int = RUNS,
    config: RolloutConfig = CONFIG,
) -> Outcome:
    """Whole rollouts: every interval RATE requests arrive, split by the step's share, all
    labelled; each evaluation sees the cumulative aggregates and its decision is obeyed."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(config.steps) / 100
    step = np.zeros(runs, int)
    started = np.zeros(runs)
    epochs: list[list[Epoch]] = [[_epoch(0, steps[0], 0.0)] for _ in range(runs)]
    tallies: list[dict[tuple[str, int, int], np.ndarray]] = [{} for _ in range(runs)]
    cells: list[dict[tuple[str, int, int], Cell]] = [{} for _ in range(runs)]
    outcome = np.full(runs, "", dtype=object)
    labelled_at = np.zeros(runs)
    reasons: Counter[str] = Counter()
    arms = (
        (CONTROL, BASE_ACCURACY, BASE_ERROR_RATE, 0.0),
        (CANDIDATE, accuracy, error_rate, math.log(latency_factor)),
    )
    for t in range(1, cap // RATE + 1):
        active = np.flatnonzero(outcome == "")
        if not active.size:
            break
        now = t * config.evaluation_interval_s
        bucket = int((now - config.evaluation_interval_s) // BUCKET_S)
        n_candidate = rng.binomial(RATE, steps[step[active]])
        moments = []
        for (_, acc, err, slower), n in zip(arms, (RATE - n_candidate, n_candidate), strict=True):
            errors = rng.binomial(n, err)
            answered = n - errors
            correct = rng.binomial(answered, acc)
            mu = LOG_MU + slower
            log_sum = rng.normal(answered * mu, np.sqrt(answered) * LOG_SD)
            spread = LOG_SD**2 * rng.chisquare(np.maximum(answered - 1, 1)) * (answered > 1)
            log_sq = spread + log_sum**2 / np.maximum(answered, 1)
            moments.append(np.stack([n, errors, log_sum, log_sq, answered, correct], axis=1))
        for k, run_id in enumerate(active):
            tally = tallies[run_id]
            for (name, *_), m in zip(arms, moments, strict=True):
                key = (name, int(step[run_id]), bucket)
                tally[key] = tally.get(key, 0) + m[k]
                cells[run_id][key] = _cell(key, tally[key])
            agg = ExperimentAggregates.model_construct(
                experiment="sim",
                classification=True,
                control=CONTROL,
                bucket_s=BUCKET_S,
                cells=list(cells[run_id].values()),
                epochs=epochs[run_id],
                units=[],
                paired=[],
                label_delay_s=[],
            )
            d = decide(config, int(step[run_id]), float(started[run_id]), now, agg)
            if d.kind is DecisionKind.ADVANCE:
                step[run_id] += 1
                started[run_id] = now
                epochs[run_id].append(_epoch(int(step[run_id]), steps[step[run_id]], now))
            elif d.terminal:
                outcome[run_id] = d.kind.value
                if d.kind is DecisionKind.ROLLBACK:
                    reasons[d.reason.split(":")[0]] += 1
                labelled_at[run_id] = d.figures.control_labelled_total + (
                    d.figures.candidate_labelled_total
                )
    undecided = outcome == ""
    for run_id in np.flatnonzero(undecided):
        labelled_at[run_id] = sum(m[4] for m in tallies[run_id].values())
    decided = ~undecided
    return Outcome(
        promoted=float(np.mean(outcome == "promote")),
        rolled_back=float(np.mean(outcome == "rollback")),
        undecided=float(np.mean(undecided)),
        labelled_to_decision=float(labelled_at[decided].mean()) if decided.any() else math.inf,
        labelled_mean=float(labelled_at.mean()),
        rollback_reasons=dict(reasons),
    )


def _epoch(epoch: int, share: float, started_at: float) -> Epoch:
    return Epoch.model_construct(
        epoch=epoch, shares={CONTROL: 1 - share, CANDIDATE: share}, started_at=started_at
    )


def _cell(key: tuple[str, int, int], m: np.ndarray) -> Cell:
    variant, epoch, bucket = key
    return Cell.model_construct(
        variant=variant,
        epoch=epoch,
        assignment=AssignmentKind.SPLIT,
        bucket=bucket,
        requests=int(m[0]),
        errors=int(m[1]),
        log_latency_sum=float(m[2]),
        log_latency_sq=float(m[3]),
        labelled=int(m[4]),
        correct=int(m[5]),
        abs_error_sum=0.0,
        abs_error_sq=0.0,
    )


def report(case: str, cap: int, o: Outcome) -> None:
    print(
        f"\n[rollout simulation] {case}: {RUNS} runs, cap {cap} requests:"
        f" promoted {o.promoted:.1%}, rolled back {o.rolled_back:.1%},"
        f" undecided {o.undecided:.1%}; labelled samples to a decision"
        f" {o.labelled_to_decision:.0f} (over all runs, undecided at the cap:"
        f" {o.labelled_mean:.0f}); rollbacks: {o.rollback_reasons}"
    )
    assert math.isfinite(o.labelled_to_decision) and math.isfinite(o.labelled_mean)


def test_simulated_candidate_worse_by_the_margin_is_rarely_promoted() -> None:
    o = simulate(seed=1, cap=CAP_LONG, accuracy=BASE_ACCURACY - CONFIG.non_inferiority_margin)
    report("(a) worse by the margin (83% vs 85%)", CAP_LONG, o)
    assert o.promoted <= 0.05


def test_simulated_equal_candidate_is_rarely_rolled_back() -> None:
    o = simulate(seed=2, cap=CAP_LONG)
    report("(b) equal to the control (85%)", CAP_LONG, o)
    assert o.rolled_back <= 0.05


def test_simulated_clearly_better_candidate_is_promoted_within_the_planned_size() -> None:
    o = simulate(seed=3, cap=CAP_PLANNED, accuracy=BASE_ACCURACY + 0.05)
    report(f"(c) better by 5 points (90% vs 85%; planned {PLANNED})", CAP_PLANNED, o)
    assert o.promoted >= 0.8


@pytest.mark.parametrize(
    ("case", "breach"),
    [
        ("(d) error rate +5 points", {"error_rate": BASE_ERROR_RATE + 0.05}),
        ("(d) latency 2x", {"latency_factor": 2.0}),
    ],
)
def test_simulated_guardrail_breach_is_always_rolled_back(case: str, breach: dict) -> None:
    o = simulate(seed=4, cap=CAP_LONG, **breach)
    report(case, CAP_LONG, o)
    assert o.rolled_back == 1.0
