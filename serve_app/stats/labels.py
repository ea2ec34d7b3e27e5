"""Label coverage per variant, whether it differs between live variants, and label delay."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from raysplit.eventstore.aggregates import AssignmentKind, Cell
from serve_app.stats.models import RANDOMISED, LabelCoverage, LabelDelay, VariantCoverage
from serve_app.stats.sample_ratio import _chi_square
from serve_app.stats.settings import LABEL_COVERAGE_ALPHA, MIN_EXPECTED_COUNT


def label_coverage(
    cells: Sequence[Cell], label_delay_s: Sequence[float] = (), live: Sequence[str] | None = None
) -> LabelCoverage:
    """Per variant labelled / answered (split and sticky for live variants, shadow cells for
    shadows), and a chi-square per (epoch, assignment) stratum of labelled vs unlabelled by
    live variant, summed over strata (statistics and degrees of freedom). Strata with an
    expected count under 5 (e.g. a fresh epoch without labels yet) are not tested."""
    live_names = (
        set(live) if live is not None else {c.variant for c in cells if c.assignment in RANDOMISED}
    )
    per_variant: dict[str, list[int]] = {}
    per_stratum: dict[tuple[int, AssignmentKind], dict[str, list[int]]] = {}
    for c in cells:
        counted = (c.variant in live_names and c.assignment in RANDOMISED) or (
            c.variant not in live_names and c.assignment is AssignmentKind.SHADOW
        )
        if not counted:
            continue
        tally = per_variant.setdefault(c.variant, [0, 0])
        tally[0] += c.answered
        tally[1] += c.labelled
        if c.variant in live_names:
            cell = per_stratum.setdefault((c.epoch, c.assignment), {}).setdefault(c.variant, [0, 0])
            cell[0] += c.labelled
            cell[1] += c.answered - c.labelled
    total, df = 0.0, 0
    for table in per_stratum.values():
        observed = np.array([t for t in table.values() if sum(t) > 0], dtype=float)
        if len(observed) < 2:
            continue
        expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
        if expected.min() < MIN_EXPECTED_COUNT:
            continue
        total += _chi_square(observed, expected)
        df += len(observed) - 1
    p_value = float(stats.chi2.sf(total, df)) if df else None
    delays = np.asarray(label_delay_s, dtype=float)
    median, p95 = np.percentile(delays, [50, 95]).tolist() if delays.size else (None, None)
    return LabelCoverage(
        variants=[
            VariantCoverage(
                variant=name,
                live=name in live_names,
                answered=answered,
                labelled=labelled,
                coverage=labelled / answered if answered else None,
            )
            for name, (answered, labelled) in sorted(per_variant.items())
        ],
        statistic=total if df else None,
        df=df,
        p_value=p_value,
        flagged=p_value is not None and p_value < LABEL_COVERAGE_ALPHA,
        delay=LabelDelay(samples=int(delays.size), median_s=median, p95_s=p95),
    )
