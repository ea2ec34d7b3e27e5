"""The timeline behind the results page: each point is the report cut at a bucket's end
(the last one is the report itself), points are spread over long experiments, and p95
latency comes from the answers inside each point's interval."""

from serve_app.report.experiment import build_report
from serve_app.report.timeline import build_timeline
from tests.unit.test_report import SHADOW, aggregates, cell


def three_minutes():
    return aggregates(
        [
            cell("champion", 100, 75, bucket=10),
            cell("challenger", 100, 90, bucket=10),
            cell("champion", 100, 80, bucket=11),
            cell("challenger", 100, 95, bucket=11),
            cell("champion", 200, 150, bucket=13),
            cell("challenger", 200, 190, bucket=13),
            cell("shadow", 100, 90, SHADOW, bucket=13),
        ]
    )


def test_each_point_is_the_report_at_the_end_of_its_bucket() -> None:
    data = three_minutes()
    timeline = build_timeline(data, {})
    assert [p.at for p in timeline.points] == [660.0, 720.0, 840.0]
    first = {v.name: v for v in timeline.points[0].variants}
    assert first["champion"].requests == 100 and first["champion"].accuracy.estimate == 0.75
    assert "shadow" not in first  # no copies yet
    last = timeline.points[-1]
    report = build_report(data, {})
    assert [(v.name, v.requests, v.accuracy, v.observed_share) for v in last.variants] == [
        (v.name, v.assigned, v.accuracy, v.observed_share) for v in report.variants
    ]
    assert [c.always_valid_p_value for c in last.comparisons] == [
        c.always_valid_p_value for c in report.comparisons
    ]
    assert timeline.alpha == report.alpha


def test_a_long_experiment_is_sampled_evenly_with_its_first_and_last_bucket() -> None:
    cells = [cell(v, 10, 8, bucket=b) for b in range(100) for v in ("champion", "challenger")]
    timeline = build_timeline(aggregates(cells), {}, max_points=5)
    assert [p.at / 60 - 1 for p in timeline.points] == [0, 25, 50, 74, 99]
    assert build_timeline(aggregates(cells), {}, max_points=1).points[0].at == 100 * 60


def test_p95_latency_counts_only_the_answers_since_the_previous_point() -> None:
    latencies = {"champion": [(650.0, 1.0), (700.0, 9.0), (710.0, 9.0), (10_000.0, 50.0)]}
    points = build_timeline(three_minutes(), latencies).points
    p95 = [{v.name: v.p95_latency_ms for v in p.variants}["champion"] for p in points]
    assert p95 == [1.0, 9.0, None]  # the answer at 10,000 s lies after the last point
    assert all(v.p95_latency_ms is None for p in points for v in p.variants if v.name != "champion")


def test_an_experiment_with_no_predictions_has_no_points() -> None:
    timeline = build_timeline(aggregates([]), {})
    assert timeline.points == [] and timeline.experiment == "exp"
