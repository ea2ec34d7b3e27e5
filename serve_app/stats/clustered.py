"""The variance of sticky traffic: the router randomised users, not requests.

A sticky user's requests share the user (their own accuracy, their own latency), so
treating them as independent draws understates the variance: an A/A test over HTTP with
both arms on one model version, 60 users who differ, reported p = 6e-20 (issue 34). Each
arm's mean within a stratum is a ratio of sums over users, ``R = sum(y) / sum(x)``, and
the stratified difference ``D = sum_s w_s (R_challenger,s - R_control,s)`` is, to first
order, a sum over users of each user's influence

    t_i = sum over (variant v, epoch s) of c_vs * (y_i,vs - R_vs * x_i,vs),
    c_vs = +-w_s / X_vs   (+ for the challenger, - for the control).

Users are independent of one another, so ``Var(D) = sum_i t_i^2`` (the delta method; a
cluster-robust variance with the user as cluster). Expanded, it needs only sums over
users of products of their totals in two cells, which the event store keeps
(:class:`raysplit.eventstore.aggregates.UnitMoments`): a user who stays across epochs, or
moves arm when a ramp moves the boundary, enters through the cross terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from raysplit.eventstore.aggregates import UNIT_RATIOS, UnitMoments
from serve_app.stats.models import Metric

Cell = tuple[str, int]  # (variant, epoch)


def clustered_variance(
    moments: Sequence[UnitMoments],
    metric: Metric,
    coefficients: Mapping[Cell, float],
    means: Mapping[Cell, float],
) -> float:
    """``sum_i t_i^2`` for the influence above, from the cross-cell sums of products.

    ``coefficients`` are the ``c_vs`` of the cells that enter the estimate (others are
    left out), ``means`` the ``R_vs`` the residuals are taken around: each arm's own for an
    interval, the stratum's pooled mean for a test under "no difference".
    """
    x, y = UNIT_RATIOS[metric.value]
    total = 0.0
    for m in moments:
        one, two = (m.variant, m.epoch), (m.other_variant, m.other_epoch)
        if one not in coefficients or two not in coefficients:
            continue
        p, r1, r2 = m.products, means[one], means[two]
        residual_product = (
            p[f"{y}*{y}"] - r2 * p[f"{y}*{x}"] - r1 * p[f"{x}*{y}"] + r1 * r2 * p[f"{x}*{x}"]
        )
        total += coefficients[one] * coefficients[two] * residual_product
    return max(total, 0.0)
