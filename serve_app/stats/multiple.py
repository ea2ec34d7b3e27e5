"""Holm's correction across the candidates of one experiment.

* **Several candidates.** Holm's step-down correction across the candidates of one
  experiment (every live challenger against the control and every shadow against the live
  variant it mirrors) for the fixed-horizon and the always-valid p-values; guardrails are
  corrected the same way, one family per guardrail metric. Holm needs nothing but valid
  marginal p-values, so it also holds for always-valid ones at any stopping time.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.stats.models import PairedComparison, StratifiedComparison


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values; None stays None and does not count towards the
    family size. (The same numbers as statsmodels' ``multipletests(method="holm")``, which
    runs a full garbage collection per call: seconds per report over hundreds of runs.)"""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def _adjust(family: Sequence[StratifiedComparison | PairedComparison]) -> None:
    for fixed, p in zip(family, holm([c.p_value for c in family]), strict=True):
        fixed.adjusted_p_value = p
    for always, p in zip(family, holm([c.always_valid_p_value for c in family]), strict=True):
        always.adjusted_always_valid_p_value = p
