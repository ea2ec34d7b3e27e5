"""The experiment report as text for a terminal (`raysplit report`)."""

from __future__ import annotations

from typing import Any


def _interval(value: dict[str, float] | None, digits: int = 3) -> str:
    if not value:
        return "-"
    return f"{value['estimate']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def render(report: dict[str, Any]) -> str:
    quality = "accuracy" if report["task"] == "classification" else "mae"
    lines = [
        f"experiment {report['experiment']} ({report['task']}): {report['requests']} live"
        f" requests, control {report['control']}",
        f"sample-ratio check p = {_p(report['srm_p_value'])}"
        if report["srm_p_value"] is not None
        else "sample-ratio check: no configured weights",
        "",
        f"{'variant':<14}{'assigned':>9}{'errors':>7}{'share':>8}{'expected':>10}{'feedback':>10}"
        f"  {quality + ' (95% CI)':<26}{'p50/p99 ms':>14}",
    ]
    for v in report["variants"]:
        share = "shadow" if v["shadow"] else f"{(v['observed_share'] or 0):.1%}"
        expected = f"{v['expected_share']:.1%}" if v["expected_share"] is not None else "-"
        latency = v["latency_ms"]
        lat = f"{latency['p50']:.2f}/{latency['p99']:.2f}" if latency else "-"
        value = _interval(v["agreement_with_live"] if v["shadow"] else v[quality])
        lines.append(
            f"{v['name']:<14}{v['assigned']:>9}{v['errors']:>7}{share:>8}{expected:>10}"
            f"{v['feedback']:>10}  {value:<26}{lat:>14}"
        )
        drifted = {f: d["psi"] for f, d in (v.get("drift") or {}).items() if d["status"] != "ok"}
        if drifted:
            lines.append(
                "    drift (PSI): " + ", ".join(f"{f}={p:.2f}" for f, p in drifted.items())
            )
    lines.append("")
    for c in report["comparisons"]:
        lines.append(
            f"{c['challenger']} vs {c['control']}: {c['metric']} difference"
            f" {_interval(c['difference'], 4)}, p = {_p(c['p_value'])}, always-valid p ="
            f" {_p(c['always_valid_p_value'])} -> {c['verdict']}"
        )
        size = c.get("sample_size")
        if size:
            lines.append(
                f"    to detect {size['min_detectable_effect']:.3g} with 80% power:"
                f" {size['sequential']} scored per arm watched continuously"
                f" ({size['fixed_horizon']} if read once); smaller arm has {size['collected']}"
            )
    events = report.get("events") or {}
    if events:
        lines.append(f"events (this replica): {events}")
    return "\n".join(lines)
