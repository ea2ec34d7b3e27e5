"""The sample-ratio check: per (epoch, assignment kind) against the epoch's own shares.

Each stratum is one multinomial: split traffic counts requests, sticky traffic counts
users once, in the epoch of their first request (a user who stays through a ramp is one
draw of the router; counting them again in every epoch they appear made the per-epoch
tests dependent and the alarm fire three times too often). The report re-checks at every
refresh, so the alarm reads always-valid p-values: a Dirichlet-multinomial mixture of
alternatives around the expected shares gives each stratum a Bayes factor that is a
martingale under a correct router (Lindon & Malek, 2022), and their product is one for
all strata; by Ville's inequality either crosses 1/alpha with probability at most alpha,
however often it is looked at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from scipy.special import gammaln

from raysplit.eventstore.aggregates import AssignmentKind, Cell, Epoch, EpochUnits
from serve_app.stats.models import SampleRatio, SampleRatioStratum
from serve_app.stats.multiple import holm
from serve_app.stats.settings import (
    MIN_EXPECTED_COUNT,
    SRM_ALPHA,
    SRM_PRIOR_COUNT,
    SRM_STRATA_SHARE,
)

TWO_ARMS = "(users served by two variants)"


def _chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sum((observed - expected) ** 2 / expected))


def log_bayes_factor(observed: np.ndarray, shares: np.ndarray) -> float:
    """ln of the Dirichlet-multinomial mixture (prior ``SRM_PRIOR_COUNT * shares``) over
    the multinomial at ``shares``: the evidence that the counts do not follow the shares.
    The prior's weight is that of a few hundred draws, so it looks for deviations of a few
    points in share, the size a routing or logging defect leaves."""
    prior = SRM_PRIOR_COUNT * shares
    n = observed.sum()
    mixture = (
        gammaln(SRM_PRIOR_COUNT)
        - gammaln(SRM_PRIOR_COUNT + n)
        + np.sum(gammaln(prior + observed) - gammaln(prior))
    )
    return float(mixture - np.sum(observed * np.log(shares)))


def _always_valid(log_bf: float) -> float:
    return float(min(1.0, math.exp(-log_bf)))


def sample_ratio_by_epoch(
    cells: Sequence[Cell],
    epochs: Sequence[Epoch],
    units: Sequence[EpochUnits] = (),
    units_in_two_arms: Mapping[int, int] | None = None,
) -> SampleRatio:
    """SRM per (epoch, assignment kind) against the epoch's own shares, combined.

    Split strata count requests (each request is one draw); sticky strata count distinct
    units from ``units`` (each user is one draw, however many requests they send), never
    requests: a few heavy users would otherwise make the check meaningless. Forced and
    shadow cells are ignored. A randomised assignment to a variant with no share in its
    epoch is a router defect and flags the stratum outright (p = 0), as does a sticky user
    served by two variants within one epoch (``units_in_two_arms``).
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
    strata, total, df, evidence = [], 0.0, 0, 0.0
    for (epoch, kind), observed in sorted(counts.items()):
        if epoch not in shares:
            notes.append(f"epoch {epoch}: no recorded shares, not tested")
            continue
        names = list(shares[epoch])
        unexpected = {n: k for n, k in observed.items() if n not in shares[epoch] and k > 0}
        if kind is AssignmentKind.STICKY and (twice := (units_in_two_arms or {}).get(epoch)):
            unexpected[TWO_ARMS] = twice
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
        if len(names) >= 2 and obs.sum() > 0 and not unexpected:
            log_bf = log_bayes_factor(obs, weights / weights.sum())
            stratum.always_valid_p_value = _always_valid(log_bf)
            evidence += log_bf
        if stratum.statistic is not None:
            total += stratum.statistic
            df += stratum.df
        strata.append(stratum)
    return _combined(strata, total, df, evidence, notes)


def _combined(
    strata: list[SampleRatioStratum], total: float, df: int, evidence: float, notes: list[str]
) -> SampleRatio:
    """The fixed-horizon sum for reference; the alarm on the always-valid p-values."""
    p_value = float(stats.chi2.sf(total, df)) if df else None
    tested = [s for s in strata if s.always_valid_p_value is not None]
    for s, adjusted in zip(tested, holm([s.always_valid_p_value for s in tested]), strict=True):
        s.adjusted_p_value = adjusted
    always_valid = None
    if tested:  # the level split between the two routes (Bonferroni)
        smallest = min(s.adjusted_p_value for s in tested) / SRM_STRATA_SHARE
        combined = _always_valid(evidence) / (1 - SRM_STRATA_SHARE)
        always_valid = min(1.0, smallest, combined)
    if any(s.unexpected for s in strata):
        p_value = always_valid = 0.0
    return SampleRatio(
        statistic=total if df else None,
        df=df,
        p_value=p_value,
        always_valid_p_value=always_valid,
        flagged=always_valid is not None and always_valid < SRM_ALPHA,
        strata=strata,
        notes=notes,
    )
