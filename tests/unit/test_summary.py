from serve_app.report.summary import summarize


def row(variant: str, latency: float, outcome: str = "ok", shadow: bool = False) -> dict:
    return {"variant": variant, "shadow": shadow, "outcome": outcome, "latency_ms": latency}


def test_summary_counts_errors_and_latency_per_variant() -> None:
    rows = [row("a", float(i)) for i in range(1, 101)]
    rows += [row("b", 1.0), row("b", 3.0), row("b", 9.0, "error"), row("s", 2.0, shadow=True)]
    summary = summarize("exp", 10.0, rows, {"queued": 0})
    assert (summary.requests, summary.errors) == (103, 1)
    assert summary.error_rate == 1 / 103 and summary.requests_per_s == 10.3
    assert summary.variants["a"].latency_ms.p50 == 50.5
    b = summary.variants["b"]
    assert (b.requests, b.errors, b.error_rate) == (3, 1, 1 / 3)
    assert b.latency_ms.p99 < 3.0  # the failed request's time is not a served latency
    assert set(summary.shadow_variants) == {"s"} and "s" not in summary.variants


def test_an_empty_window_has_no_rates() -> None:
    summary = summarize("exp", 60.0, [], {})
    assert summary.requests == 0 and summary.error_rate is None and summary.latency_ms is None
