"""The plain-text rendering of :class:`ExperimentStatistics` for `raysplit report`."""

from __future__ import annotations

from serve_app.stats.common import Interval
from serve_app.stats.models import ExperimentStatistics


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def _iv(i: Interval | None, scale: float = 1.0) -> str:
    if i is None:
        return "-"
    return f"{scale * i.estimate:+.3g} [{scale * i.low:+.3g}, {scale * i.high:+.3g}]"


def render_text(result: ExperimentStatistics) -> str:
    """A plain-text rendering for `raysplit report` (the JSON is ``model_dump_json``)."""
    srm = result.sample_ratio
    lines = [
        f"experiment {result.experiment} ({result.task}), control {result.control}"
        f" [statistics schema {result.schema_version}]",
        f"SRM: always-valid p = {_p(srm.always_valid_p_value)}, fixed-horizon p ="
        f" {_p(srm.p_value)} over {len(srm.strata)} strata (chi2 {srm.statistic or 0:.3g},"
        f" df {srm.df}){'  FLAGGED' if srm.flagged else ''}",
    ]
    for s in srm.strata:
        lines.append(
            f"  epoch {s.epoch} {s.assignment.value} ({s.counted_in}): {s.observed}"
            f" p = {_p(s.p_value)}, always-valid {_p(s.always_valid_p_value)}"
        )
    for c in result.comparisons + result.guardrails:
        ratio = (
            f" (latency ratio {c.ratio.estimate:.3g} [{c.ratio.low:.3g}, {c.ratio.high:.3g}])"
            if c.ratio
            else ""
        )
        per_user = (
            f" [sticky strata per user, design effect {c.design_effect:.2f}]"
            if c.design_effect is not None
            else ""
        )
        if c.variance_reduction is not None:
            per_user += f" [variance reduced by {c.variance_reduction:.0%} (CUPED)]"
        lines.append(
            f"{c.challenger} vs {c.control}: {c.metric.value} difference {_iv(c.difference)}{ratio}"
            f" p = {_p(c.p_value)} (Holm {_p(c.adjusted_p_value)}), always-valid"
            f" {_p(c.always_valid_p_value)} (Holm {_p(c.adjusted_always_valid_p_value)})"
            f" -> {c.verdict.value}{per_user}"
        )
    for s in result.shadows:
        lines.append(
            f"shadow {s.shadow} paired {s.metric.value} on {s.pairs}: {_iv(s.difference)}"
            f" p = {_p(s.p_value)}{' (exact)' if s.exact else ''}, always-valid"
            f" {_p(s.adjusted_always_valid_p_value)} -> {s.verdict.value}"
        )
    labels = result.labels
    coverage = ", ".join(
        f"{v.variant} {100 * v.coverage:.1f}%" if v.coverage is not None else f"{v.variant} -"
        for v in labels.variants
    )
    lines.append(
        f"labels: {coverage}; differ p = {_p(labels.p_value)}; delay median"
        f" {_p(labels.delay.median_s)} s, p95 {_p(labels.delay.p95_s)} s"
    )
    for f in result.forced:
        lines.append(
            f"forced (not compared): {f.variant} {f.requests} requests, {f.errors} errors,"
            f" {f.correct}/{f.labelled} correct"
        )
    lines += [f"{s.challenger}: {s.summary}" for s in result.summaries]
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
