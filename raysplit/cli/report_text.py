"""The experiment report as text for a terminal (`raysplit report`): each variant's
figures as a table, then the statistics as :mod:`serve_app.stats` words them."""

from __future__ import annotations

from typing import Any

from serve_app.report.experiment import ExperimentReport
from serve_app.stats.common import Interval
from serve_app.stats.text import render_text


def _interval(value: Interval | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value.estimate:.{digits}f} [{value.low:.{digits}f}, {value.high:.{digits}f}]"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render(payload: dict[str, Any]) -> str:
    report = ExperimentReport.model_validate(payload)
    quality = "accuracy" if report.task == "classification" else "mae"
    lines = [
        f"experiment {report.experiment} ({report.task}): {report.requests} live requests,"
        f" control {report.control}, {report.epochs} allocation epoch(s)",
        "",
        f"{'variant':<14}{'assigned':>9}{'forced':>7}{'errors':>7}{'share':>8}{'expected':>10}"
        f"{'labels':>8}  {quality + ' (95% CI)':<26}{'p50/p99 ms':>14}",
    ]
    for v in report.variants:
        share = "shadow" if v.shadow else _share(v.observed_share)
        latency = f"{v.latency_ms.p50:.2f}/{v.latency_ms.p99:.2f}" if v.latency_ms else "-"
        value = _interval(v.agreement_with_live if v.shadow else getattr(v, quality))
        lines.append(
            f"{v.name:<14}{v.assigned:>9}{v.forced:>7}{v.errors:>7}{share:>8}"
            f"{_share(v.expected_share):>10}{v.feedback:>8}  {value:<26}{latency:>14}"
        )
        drifted = {f: d.psi for f, d in (v.drift or {}).items() if d.status != "ok"}
        if drifted:
            lines.append(
                "    drift (PSI): " + ", ".join(f"{f}={p:.2f}" for f, p in drifted.items())
            )
    lines += ["", *render_text(report).splitlines()[1:]]  # its first line repeats the header
    for c in report.comparisons:
        size = c.sample_size
        if size:
            lines.append(
                f"    {c.challenger}: to detect {size.min_detectable_effect:.3g} with 80% power,"
                f" {size.sequential} labelled per arm watched continuously"
                f" ({size.fixed_horizon} if read once); {size.collected} so far (effective)"
            )
    if report.events:
        lines.append(f"events (this replica): {report.events}")
    return "\n".join(lines)
