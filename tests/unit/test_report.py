"""The report from aggregates: each variant's figures beside the statistics, forced
traffic on its own line, errors counted as assigned, drift per feature."""

import numpy as np
import pandas as pd

from raysplit.core.reference_stats import reference_stats
from raysplit.eventstore.aggregates import (
    AssignmentKind,
    Cell,
    Epoch,
    ExperimentAggregates,
    PairedCell,
)
from raysplit.eventstore.queries import VariantFacts
from serve_app.report.experiment import build_report
from serve_app.stats.common import Verdict
from serve_app.stats.drift import psi

SPLIT, FORCED, SHADOW = AssignmentKind.SPLIT, AssignmentKind.FORCED, AssignmentKind.SHADOW
HALF = {"champion": 0.5, "challenger": 0.5}


def cell(variant: str, requests: int, correct: int, kind=SPLIT, errors: int = 0, bucket=0):
    answered = requests - errors
    return Cell(
        variant=variant,
        epoch=1,
        assignment=kind,
        bucket=bucket,
        requests=requests,
        errors=errors,
        log_latency_sum=answered * np.log(2.0),
        log_latency_sq=answered * np.log(2.0) ** 2,
        labelled=answered,
        correct=correct,
    )


def aggregates(cells: list[Cell], paired=(), shares=HALF) -> ExperimentAggregates:
    return ExperimentAggregates(
        experiment="exp",
        classification=True,
        control="champion",
        bucket_s=60.0,
        cells=cells,
        epochs=[Epoch(epoch=1, shares=shares, started_at=0.0)],
        paired=list(paired),
    )


FACTS = {
    "champion": VariantFacts(model_versions=["1"], recent_latency_ms=[1.0, 2.0, 3.0]),
    "challenger": VariantFacts(model_versions=["2"], recent_latency_ms=[2.0]),
    "shadow": VariantFacts(model_versions=["3"], recent_latency_ms=[2.0], agreement=(750, 1000)),
}


def test_a_better_challenger_and_a_scored_shadow() -> None:
    cells = [
        cell("champion", 1500, 1125),  # 75%
        cell("challenger", 1500, 1350),  # 90%
        cell("shadow", 1500, 1350, SHADOW),
    ]
    paired = [
        PairedCell(
            shadow="shadow", epoch=1, bucket=0, pairs=1500, both_correct=1100, shadow_only=250
        )
    ]
    report = build_report(aggregates(cells, paired), FACTS, HALF)
    by_name = {v.name: v for v in report.variants}
    assert report.requests == 3000 and report.srm_p_value > 0.001
    assert by_name["champion"].accuracy.low < 0.75 < by_name["champion"].accuracy.high
    assert by_name["champion"].observed_share == 0.5 and by_name["champion"].expected_share == 0.5
    assert by_name["shadow"].shadow and by_name["shadow"].observed_share is None
    assert by_name["shadow"].agreement_with_live.estimate == 0.75
    assert by_name["champion"].latency_ms.p50 == 2.0
    assert by_name["challenger"].model_versions == ["2"]
    (comparison,) = report.comparisons
    assert comparison.verdict is Verdict.BETTER
    (shadow,) = report.shadows
    assert shadow.shadow == "shadow" and shadow.verdict is Verdict.BETTER
    assert report.schema_version == 1 and report.report_schema_version == 2


def test_a_mismatched_split_is_flagged_and_not_compared() -> None:
    cells = [cell("champion", 1000, 800), cell("challenger", 1000, 800)]
    report = build_report(
        aggregates(cells, shares={"champion": 0.9, "challenger": 0.1}),
        FACTS,
        {"champion": 0.9, "challenger": 0.1},
    )
    assert report.srm_p_value < 0.001 and report.sample_ratio.flagged
    assert report.comparisons[0].verdict is Verdict.SRM


def test_forced_requests_are_counted_apart_and_change_no_comparison() -> None:
    cells = [cell("champion", 1000, 800), cell("challenger", 1000, 800)]
    forced = cell("challenger", 200, 0, FORCED)  # QA traffic that is always wrong
    plain = build_report(aggregates(cells), FACTS, HALF)
    mixed = build_report(aggregates([*cells, forced]), FACTS, HALF)
    challenger = {v.name: v for v in mixed.variants}["challenger"]
    assert (challenger.assigned, challenger.forced) == (1000, 200)
    assert challenger.accuracy == {v.name: v for v in plain.variants}["challenger"].accuracy
    assert mixed.comparisons == plain.comparisons and mixed.srm_p_value == plain.srm_p_value
    assert mixed.requests == plain.requests + 200
    assert [(f.variant, f.requests) for f in mixed.forced] == [("challenger", 200)]


def test_failed_predictions_count_as_assigned_errors_only() -> None:
    """A variant whose model fails on a third of its requests: assignments still match
    the weights (no SRM), the failures are errors, and quality uses what was served."""
    cells = [cell("champion", 600, 480), cell("challenger", 600, 320, errors=200)]
    report = build_report(aggregates(cells), FACTS, HALF)
    challenger = {v.name: v for v in report.variants}["challenger"]
    assert challenger.errors == report.errors == 200
    assert challenger.assigned == challenger.served + 200 == 600
    assert report.requests == 1200 and report.srm_p_value > 0.001
    assert challenger.feedback == challenger.served and challenger.label_coverage == 1.0
    assert challenger.accuracy.estimate == 0.8


def test_drift_shows_a_shifted_feature_only() -> None:
    rng = np.random.default_rng(2)
    train = pd.DataFrame({"x": rng.normal(size=2000), "y": rng.normal(size=2000)})
    ref = reference_stats(train, pd.Series(["a"] * 2000), classification=True)
    recent = np.column_stack([rng.normal(size=300) + 2.0, rng.normal(size=300)])  # x shifted
    report = build_report(
        aggregates([cell("champion", 300, 240), cell("challenger", 300, 240)]),
        FACTS,
        HALF,
        references={"champion": (ref, ["x", "y"])},
        recent_inputs={"champion": recent.tolist()},
    )
    drift = {v.name: v.drift for v in report.variants}["champion"]
    assert drift["x"].status == "drift" and drift["x"].ks_p_value < 1e-6
    assert drift["y"].status == "ok"


def test_psi_is_zero_for_the_reference_itself() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    assert psi(edges, [1 / 3] * 3, np.array([0.5, 1.5, 2.5])) < 1e-9
