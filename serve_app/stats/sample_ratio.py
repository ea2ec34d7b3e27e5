"""The sample-ratio check: per (epoch, assignment kind) against the epoch's own shares."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from raysplit.eventstore.aggregates import AssignmentKind, Cell, Epoch, EpochUnits
from serve_app.stats.models import SampleRatio, SampleRatioStratum
from serve_app.stats.settings import MIN_EXPECTED_COUNT, SRM_ALPHA


def _chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((observed - expected) ** 2 / expected))


def sample_ratio_by_epoch(
    cells: Sequence[Cell], epochs: Sequence[Epoch], units: Sequence[EpochUnits] = ()
) -> SampleRatio:
    """SRM per (epoch, assignment kind) against the epoch's own shares, combined.

    Split strata count requests (each request is one draw); sticky strata count distinct
    units from ``units`` (each user is one draw, however many requests they send), never
    requests: a few heavy users would otherwise make the check meaningless. Forced and
    shadow cells are ignored. A randomised assignment to a variant with no share in its
    epoch is a router defect and flags the stratum outright (p = 0).
    """
    shares = {e.epoch: {n: s for n, s in e.shares.items() if s > 0} for e in epochs}
    counts: dict[tuple[int, AssignmentKind], dict[str, int]] = {}
    for c in cells:
        if c.assignment is AssignmentKind.SPLIT:
            stratum = counts.setdefault((c.epoch, c.assignment), {})
            stratum[c.variant] = stratum.get(c.variant, 0) + c.requests
    sticky_epochs = {c.epoch for c in cells if c.assignment is AssignmentKind.STICKY}
    notes = []
    for u in units:
        stratum = counts.setdefault((u.epoch, AssignmentKind.STICKY), {})
        stratum[u.variant] = stratum.get(u.variant, 0) + u.units
    for epoch in sorted(sticky_epochs - {e for e, kind in counts if kind is AssignmentKind.STICKY}):
        notes.append(f"epoch {epoch}: sticky requests without unit counts, not tested")
    strata, total, df = [], 0.0, 0
    for (epoch, kind), observed in sorted(counts.items()):
        if epoch not in shares:
            notes.append(f"epoch {epoch}: no recorded shares, not tested")
            continue
        names = list(shares[epoch])
        unexpected = {n: k for n, k in observed.items() if n not in shares[epoch] and k > 0}
        obs = np.array([observed.get(n, 0) for n in names], dtype=float)
        weights = np.array([shares[epoch][n] for n in names], dtype=float)
        expected = weights / weights.sum() * obs.sum()
        stratum = SampleRatioStratum(
            epoch=epoch,
            assignment=kind,
            counted_in="units" if kind is AssignmentKind.STICKY else "requests",
            observed={n: int(k) for n, k in zip(names, obs, strict=True)},
            expected={n: float(e) for n, e in zip(names, expected, strict=True)},
            unexpected=unexpected,
            statistic=None,
            df=len(names) - 1,
            p_value=None,
        )
        if unexpected:
            stratum.p_value = 0.0
            stratum.statistic = math.inf
        elif len(names) >= 2 and expected.min() >= MIN_EXPECTED_COUNT:
            stratum.statistic = _chi_square(obs, expected)
            stratum.p_value = float(stats.chi2.sf(stratum.statistic, stratum.df))
        if stratum.statistic is not None:
            total += stratum.statistic
            df += stratum.df
        strata.append(stratum)
    p_value = float(stats.chi2.sf(total, df)) if df else None
    if any(s.unexpected for s in strata):
        p_value = 0.0
    return SampleRatio(
        statistic=total if df else None,
        df=df,
        p_value=p_value,
        flagged=p_value is not None and p_value < SRM_ALPHA,
        strata=strata,
        notes=notes,
    )
