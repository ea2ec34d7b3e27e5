"""Sticky traffic as production records it, simulated apart from the code under test.

Users differ and persist: each has their own accuracy (a log-odds offset with standard
deviation ``user_sd`` around a base rate that drifts over the experiment), their own
request rate (heavy and light users), and an active span that may cover several
allocation epochs. Requests arrive as a Poisson process per user; a user's arm is decided
by their own fixed position in [0, 1) against the epoch's shares, laid out in variant
order as a router does, so a ramp moves the users at the boundary and no one else. Labels
arrive after a log-normal delay (median ``label_median_s``) or never (``label_missing``),
and a report sees only those that arrived; model errors are rare.

The output is what the event store would hold: the rollup cells per (variant, epoch,
bucket), each user's first epoch, and the sums over users of products of their totals
(computed here by brute force over the users, not by the store's SQL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from raysplit.eventstore.aggregates import (
    UNIT_PRODUCTS,
    UNIT_TOTALS,
    AssignmentKind,
    Cell,
    Epoch,
    EpochUnits,
    ExperimentAggregates,
    UnitMoments,
)

STICKY = AssignmentKind.STICKY
NAMES = ("control", "challenger")
TOTALS = UNIT_TOTALS  # the store's names for a user's totals (a contract, not logic)
INDEX = {name: i for i, name in enumerate(TOTALS)}
PAIRS = UNIT_PRODUCTS


@dataclass(frozen=True)
class World:
    users: int = 300
    epochs: tuple[float, ...] = (0.05, 0.20, 0.50)  # the challenger's share per epoch
    buckets_per_epoch: int = 4
    bucket_s: float = 600.0
    requests_per_user: float = 12.0  # mean over the whole experiment
    base_accuracy: tuple[float, float] = (0.90, 0.80)  # drifts linearly start -> end
    user_sd: float = 0.8  # users' own accuracy: log-odds standard deviation
    challenger_effect: float = 0.0  # added to the challenger's accuracy (probability)
    error_rate: float = 0.005
    label_missing: float = 0.15
    label_median_s: float = 90.0
    latency_user_sd: float = 0.3  # users' own log latency
    latency_sd: float = 0.4


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


def simulate(rng: np.random.Generator, world: World) -> Callable[..., ExperimentAggregates]:
    """One experiment's requests: returns a function of the report time giving the
    aggregates a report made then would read (requests and labels that had not arrived
    are missing); by default an hour after the last request."""
    w = world
    n_epochs = len(w.epochs)
    end = n_epochs * w.buckets_per_epoch * w.bucket_s
    position = rng.random(w.users)  # where the router's hash puts each user
    skill = rng.normal(0.0, w.user_sd, w.users)
    speed = rng.normal(0.0, w.latency_user_sd, w.users)
    start = rng.uniform(-0.5 * end, end, w.users).clip(0, None)
    stop = np.minimum(start + rng.exponential(end, w.users), end)
    rate = rng.gamma(1.0, w.requests_per_user / end, w.users)  # heavy and light users
    counts = rng.poisson(rate * (stop - start))
    user = np.repeat(np.arange(w.users), counts)
    at = start[user] + rng.random(user.size) * (stop - start)[user]
    epoch = np.minimum((at / (end / n_epochs)).astype(int), n_epochs - 1)
    share = np.asarray(w.epochs)[epoch]
    arm = (position[user] >= 1 - share).astype(int)  # control first, then challenger
    base = np.interp(at, [0, end], w.base_accuracy)
    accuracy = 1 / (1 + np.exp(-(_logit(base) + skill[user])))
    accuracy = np.clip(accuracy + w.challenger_effect * arm, 0, 1)
    error = rng.random(user.size) < w.error_rate
    correct = rng.random(user.size) < accuracy
    labelled_at = at + w.label_median_s * np.exp(rng.normal(0, 1, user.size))
    labelled_at[rng.random(user.size) < w.label_missing] = np.inf
    log_latency = 1.0 + speed[user] + rng.normal(0, w.latency_sd, user.size)
    bucket = (at // w.bucket_s).astype(int)
    requests = _Requests(user, at, epoch, arm, bucket, error, correct, labelled_at, log_latency)
    epochs = [
        Epoch(epoch=e, shares={NAMES[0]: 1 - s, NAMES[1]: s}, started_at=e * end / n_epochs)
        for e, s in enumerate(w.epochs)
    ]

    def aggregates(at_time: float = end + 3600.0) -> ExperimentAggregates:
        return requests.aggregates(epochs, w.users, at_time)

    return aggregates


@dataclass(frozen=True)
class _Requests:
    user: np.ndarray
    at: np.ndarray
    epoch: np.ndarray
    arm: np.ndarray
    bucket: np.ndarray
    error: np.ndarray
    correct: np.ndarray
    labelled_at: np.ndarray
    log_latency: np.ndarray

    def aggregates(self, epochs: list[Epoch], users: int, at: float) -> ExperimentAggregates:
        keep = self.at <= at  # what had arrived when the report was made
        r = {k: v[keep] for k, v in vars(self).items()}
        answered = ~r["error"]
        labelled = answered & (r["labelled_at"] <= at)
        values = {
            "requests": np.ones(r["user"].size),
            "errors": r["error"].astype(float),
            "answered": answered.astype(float),
            "log_latency_sum": np.where(answered, r["log_latency"], 0.0),
            "log_latency_sq": np.where(answered, r["log_latency"] ** 2, 0.0),
            "labelled": labelled.astype(float),
            "correct": (labelled & r["correct"]).astype(float),
            "abs_error_sum": np.zeros(r["user"].size),
        }
        return ExperimentAggregates(
            experiment="sim",
            classification=True,
            control=NAMES[0],
            bucket_s=1.0,
            cells=_cells(r, values),
            epochs=epochs,
            units=_first_exposures(r, users),
            unit_moments=_unit_moments(r, values, users, len(epochs)),
        )


def _cells(r: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> list[Cell]:
    cells = []
    keys = np.stack([r["arm"], r["epoch"], r["bucket"]], axis=1)
    found, index = np.unique(keys, axis=0, return_inverse=True)
    index = index.reshape(-1)
    sums = {k: np.bincount(index, weights=v, minlength=len(found)) for k, v in values.items()}
    for i, (arm, epoch, bucket) in enumerate(found):
        cells.append(
            Cell.model_construct(
                variant=NAMES[arm],
                epoch=int(epoch),
                assignment=STICKY,
                bucket=int(bucket),
                requests=int(sums["requests"][i]),
                errors=int(sums["errors"][i]),
                log_latency_sum=float(sums["log_latency_sum"][i]),
                log_latency_sq=float(sums["log_latency_sq"][i]),
                labelled=int(sums["labelled"][i]),
                correct=int(sums["correct"][i]),
                abs_error_sum=0.0,
                abs_error_sq=0.0,
            )
        )
    return cells


def _first_exposures(r: dict[str, np.ndarray], users: int) -> list[EpochUnits]:
    """Each user once, in the arm and epoch of their first request."""
    order = np.lexsort((r["epoch"], r["user"]))
    user = r["user"][order]
    first = np.ones(user.size, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    counts: dict[tuple[int, int], int] = {}
    for arm, epoch in zip(r["arm"][order][first], r["epoch"][order][first], strict=True):
        counts[(int(arm), int(epoch))] = counts.get((int(arm), int(epoch)), 0) + 1
    return [
        EpochUnits(variant=NAMES[arm], epoch=epoch, units=n) for (arm, epoch), n in counts.items()
    ]


def _unit_moments(
    r: dict[str, np.ndarray], values: dict[str, np.ndarray], users: int, epochs: int
) -> list[UnitMoments]:
    """Sum over users of (user's total a in cell k) x (user's total b in cell l)."""
    cell = r["arm"] * epochs + r["epoch"]
    totals = np.zeros((users, 2 * epochs, len(TOTALS)))
    for j, name in enumerate(TOTALS):
        np.add.at(totals[:, :, j], (r["user"], cell), values[name])
    return moments_of(totals, epochs)


def exposures(
    rng: np.random.Generator, world: World, looks: int
) -> tuple[list[list[EpochUnits]], list[list[EpochUnits]], list[Epoch]]:
    """Only who was served, for the sample-ratio check, at ``looks`` evenly spaced reports:
    each user once in the (arm, epoch) of their first request, and (as a reference for the
    old counting) each user in every epoch they sent a request in. Users as in
    :func:`simulate`, drawn without generating their requests one by one."""
    w = world
    n_epochs = len(w.epochs)
    end = n_epochs * w.buckets_per_epoch * w.bucket_s
    span = end / n_epochs
    position = rng.random(w.users)
    start = rng.uniform(-0.5 * end, end, w.users).clip(0, None)
    stop = np.minimum(start + rng.exponential(end, w.users), end)
    rate = rng.gamma(1.0, w.requests_per_user / end, w.users)
    shares = np.asarray(w.epochs)
    edges = np.arange(n_epochs + 1) * span
    epochs = [
        Epoch(epoch=e, shares={NAMES[0]: 1 - s, NAMES[1]: s}, started_at=e * span)
        for e, s in enumerate(w.epochs)
    ]
    # each user's requests per epoch, and the time of the first one in each
    lo = np.clip(start[:, None], edges[None, :-1], edges[None, 1:])
    hi = np.clip(stop[:, None], edges[None, :-1], edges[None, 1:])
    counts = rng.poisson(rate[:, None] * np.maximum(hi - lo, 0))
    earliest = 1 - rng.random(counts.shape) ** (1 / np.maximum(counts, 1))  # min of uniforms
    first_at = np.where(counts > 0, lo + (hi - lo) * earliest, np.inf)
    arm = (position[:, None] >= 1 - shares[None, :]).astype(int)
    first_runs, every_runs = [], []
    for report in np.linspace(end / looks, end, looks):
        active = first_at <= report
        first_epoch = np.where(active.any(axis=1), active.argmax(axis=1), -1)
        first = np.zeros((2, n_epochs), dtype=int)
        seen = first_epoch >= 0
        np.add.at(first, (arm[seen, first_epoch[seen]], first_epoch[seen]), 1)
        every = np.zeros((2, n_epochs), dtype=int)
        np.add.at(every, (arm[active], np.nonzero(active)[1]), 1)
        first_runs.append(_units(first))
        every_runs.append(_units(every))
    return first_runs, every_runs, epochs


def _units(counts: np.ndarray) -> list[EpochUnits]:
    return [
        EpochUnits.model_construct(variant=NAMES[a], epoch=e, units=int(counts[a, e]))
        for a in range(counts.shape[0])
        for e in range(counts.shape[1])
        if counts[a, e]
    ]


@dataclass
class Population:
    """Users who stay for a whole rollout, for simulations in which the share moves as the
    rule decides: each interval, every user sends a Poisson number of requests to the arm
    their position falls in under the current share; ``1 - label_missing`` of them will be
    labelled (the caller decides when the labels arrive). Accuracy: the user's own, around a
    base that drifts by ``drift`` over ``horizon`` intervals, plus ``effect`` on the
    candidate."""

    position: np.ndarray
    skill: np.ndarray
    rate: np.ndarray
    base: float
    drift: float
    horizon: int
    effect: float
    error_rate: float
    label_missing: float

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        users: int,
        requests_per_interval: float,
        base: float = 0.85,
        drift: float = -0.05,
        horizon: int = 40,
        effect: float = 0.0,
        user_sd: float = 0.8,
        error_rate: float = 0.005,
        label_missing: float = 0.15,
    ) -> Population:
        rate = rng.gamma(1.0, requests_per_interval / users, users)  # heavy and light users
        return cls(
            rng.random(users),
            rng.normal(0, user_sd, users),
            rate,
            base,
            drift,
            horizon,
            effect,
            error_rate,
            label_missing,
        )

    def interval(self, rng: np.random.Generator, t: int, share: float) -> dict[str, np.ndarray]:
        """Per user: the arm (1: candidate) and this interval's totals."""
        arm = (self.position >= 1 - share).astype(int)
        requests = rng.poisson(self.rate)
        errors = rng.binomial(requests, self.error_rate)
        answered = requests - errors
        labelled = rng.binomial(answered, 1 - self.label_missing)
        base = self.base + self.drift * min(t / self.horizon, 1.0)
        accuracy = 1 / (1 + np.exp(-(_logit(base) + self.skill)))
        accuracy = np.clip(accuracy + self.effect * arm, 0, 1)
        correct = rng.binomial(labelled, accuracy)
        log_latency = rng.normal(answered * 1.0, np.sqrt(answered) * 0.4)
        return {
            "arm": arm,
            "requests": requests.astype(float),
            "errors": errors.astype(float),
            "answered": answered.astype(float),
            "log_latency_sum": log_latency,
            "log_latency_sq": log_latency**2 / np.maximum(answered, 1) + 0.16 * answered,
            "labelled": labelled.astype(float),
            "correct": correct.astype(float),
            "abs_error_sum": np.zeros(self.position.size),
        }


def moments_of(totals: np.ndarray, epochs: int) -> list[UnitMoments]:
    """:class:`UnitMoments` from per-user totals of shape (users, 2 arms x epochs, TOTALS)."""
    present = np.abs(totals).sum(axis=2) > 0
    products = _cross_products(totals)
    together = present.astype(float).T @ present.astype(float)
    found = []
    for k in range(totals.shape[1]):
        for m in range(totals.shape[1]):
            if together[k, m] == 0:
                continue
            found.append(
                UnitMoments.model_construct(
                    variant=NAMES[k // epochs],
                    epoch=k % epochs,
                    other_variant=NAMES[m // epochs],
                    other_epoch=m % epochs,
                    users=int(together[k, m]),
                    products={
                        f"{a}*{b}": float(products[k, m, INDEX[a], INDEX[b]]) for a, b in PAIRS
                    },
                )
            )
    return found


def _cross_products(totals: np.ndarray) -> np.ndarray:
    """``sum_i totals[i, k, a] * totals[i, l, b]`` as an array (k, l, a, b), by one matrix
    product over the users."""
    users, cells, kinds = totals.shape
    flat = totals.reshape(users, cells * kinds)
    return (flat.T @ flat).reshape(cells, kinds, cells, kinds).transpose(0, 2, 1, 3)
