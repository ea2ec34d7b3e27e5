import numpy as np

from raysplit.core.reference_stats import reference_stats
from serve_app.drift import psi
from serve_app.report import build_report
from serve_app.statistics import Verdict


def rows_for(rng: np.random.Generator, n: int, p_champion: float, p_challenger: float) -> list:
    rows = []
    for i in range(n):
        variant = "champion" if rng.random() < 0.5 else "challenger"
        p = p_champion if variant == "champion" else p_challenger
        correct = rng.random() < p
        x = [float(rng.normal()), float(rng.normal())]
        base = {
            "created_at": i,
            "latency_ms": 1.0 + i % 3,
            "model_version": "1",
            "inputs": [x],
            "label": "a",
            "value": None,
        }
        rows.append(
            {
                **base,
                "request_id": f"r{i}",
                "variant": variant,
                "shadow": False,
                "predictions": ["a" if correct else "b"],
            }
        )
        rows.append(
            {
                **base,
                "request_id": f"r{i}",
                "variant": "shadow",
                "shadow": True,
                "predictions": ["a"],
                "label": "a",
            }
        )
    return rows


def test_report_finds_the_better_challenger_and_shadow_agreement() -> None:
    rng = np.random.default_rng(0)
    rows = rows_for(rng, 3000, 0.75, 0.9)
    report = build_report("exp", rows, True, {"champion": 0.5, "challenger": 0.5}, "champion")
    by_name = {v.name: v for v in report.variants}
    assert report.requests == 3000 and report.srm_p_value > 0.001
    assert by_name["champion"].accuracy.low < 0.75 < by_name["champion"].accuracy.high
    assert by_name["shadow"].shadow and by_name["shadow"].observed_share is None
    live_a = sum(r["predictions"] == ["a"] for r in rows if not r["shadow"])
    assert by_name["shadow"].agreement_with_live.estimate == live_a / 3000
    assert by_name["champion"].latency_ms.p50 == 2.0
    (comparison,) = report.comparisons
    assert comparison.verdict is Verdict.BETTER


def test_report_flags_sample_ratio_mismatch() -> None:
    rng = np.random.default_rng(1)
    rows = rows_for(rng, 2000, 0.8, 0.8)
    report = build_report("exp", rows, True, {"champion": 0.9, "challenger": 0.1})
    assert report.srm_p_value < 0.001
    assert report.comparisons[0].verdict is Verdict.SRM


def test_failed_predictions_count_as_assigned_errors_only() -> None:
    """A variant whose model fails on a third of its requests: assignments still match
    the weights (no SRM), the failures are errors, and quality uses what was served."""
    rng = np.random.default_rng(3)
    rows = [r for r in rows_for(rng, 1200, 0.8, 0.8) if not r["shadow"]]
    failed = 0
    for i, r in enumerate(rows):
        if r["variant"] == "challenger" and i % 3 == 0:
            r.update(outcome="error", predictions=[], latency_ms=500.0)
            failed += 1
    report = build_report("exp", rows, True, {"champion": 0.5, "challenger": 0.5})
    by_name = {v.name: v for v in report.variants}
    challenger = by_name["challenger"]
    assert challenger.errors == report.errors == failed > 0
    assert challenger.assigned == challenger.served + failed
    assert by_name["champion"].assigned + challenger.assigned == report.requests == 1200
    assert report.srm_p_value > 0.001
    assert challenger.latency_ms.p99 < 500 and challenger.feedback == challenger.served


def test_drift_shows_a_shifted_feature_only() -> None:
    rng = np.random.default_rng(2)
    import pandas as pd

    train = pd.DataFrame({"x": rng.normal(size=2000), "y": rng.normal(size=2000)})
    ref = reference_stats(train, pd.Series(["a"] * 2000), classification=True)
    rows = rows_for(rng, 600, 0.8, 0.8)
    for r in rows:
        r["inputs"] = [[r["inputs"][0][0] + 2.0, r["inputs"][0][1]]]  # shift x only
    champion = [x for r in rows if r["variant"] == "champion" for x in r["inputs"]]
    report = build_report(
        "exp",
        rows,
        True,
        {"champion": 0.5, "challenger": 0.5},
        references={"champion": (ref, ["x", "y"])},
        recent_inputs={"champion": champion},
    )
    drift = {v.name: v.drift for v in report.variants}["champion"]
    assert drift["x"].status == "drift" and drift["x"].ks_p_value < 1e-6
    assert drift["y"].status == "ok"


def test_psi_is_zero_for_the_reference_itself() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    assert psi(edges, [1 / 3] * 3, np.array([0.5, 1.5, 2.5])) < 1e-9
