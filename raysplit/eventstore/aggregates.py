"""What the experiment report is computed from: counts and sums the database aggregates
(SQL ``GROUP BY``), never the event rows themselves.

The grain is one variant, one allocation epoch, one assignment kind and one time bucket.
An *allocation epoch* is a period with one set of live weights, variants and salt: within
it assignment is independent of time, so effects are estimated within epochs and combined,
and the sample-ratio check compares each epoch's counts with that epoch's own shares.
Everything here is additive over buckets and epochs except what concerns sticky units
(users): how many a variant first saw in each epoch, and sums over users of products of
their totals, which carry the variance of traffic randomised by user.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from raysplit.core.events import AssignmentKind

__all__ = [
    "AssignmentKind",
    "Cell",
    "Epoch",
    "EpochUnits",
    "ExperimentAggregates",
    "PairedCell",
    "UnitMoments",
]


class Cell(BaseModel):
    """One variant's events in one epoch, assignment kind and time bucket."""

    variant: str
    epoch: int
    assignment: AssignmentKind
    bucket: int = Field(description="time bucket index: start = bucket * bucket_s")
    requests: int = Field(description="events: requests assigned, answered or failed")
    errors: int = Field(description="requests whose model raised")
    log_latency_sum: float = Field(0.0, description="sum of ln(latency_ms) of answered ones")
    log_latency_sq: float = Field(0.0, description="sum of ln(latency_ms)^2 of answered ones")
    labelled: int = Field(0, description="answered single-row requests with feedback")
    correct: int = Field(0, description="classifiers: labelled requests answered correctly")
    abs_error_sum: float = Field(0.0, description="regressors: sum of |prediction - value|")
    abs_error_sq: float = Field(0.0, description="regressors: sum of squared absolute errors")
    cov_n: int = Field(0, description="labelled requests whose feedback carries a covariate")
    cov_sum: float = Field(0.0, description="sum of those covariates")
    cov_sq: float = Field(0.0, description="sum of their squares")
    cov_y: float = Field(0.0, description="sum of covariate x outcome (correct, or |error|)")

    @property
    def answered(self) -> int:
        return self.requests - self.errors


class Epoch(BaseModel):
    """An allocation: the shares each live variant was configured to get."""

    epoch: int
    shares: dict[str, float] = Field(description="live variant -> configured share (sum 1)")
    started_at: float


class EpochUnits(BaseModel):
    """Sticky units (users) a variant served whose first request of the experiment fell in
    this epoch: each user is one draw of the router, however long they stay."""

    variant: str
    epoch: int
    units: int


# What a user's totals hold, by name (as in UnitMoments.products): ``answered`` is
# ``requests - errors``
UNIT_TOTALS = (
    "requests",
    "errors",
    "answered",
    "log_latency_sum",
    "labelled",
    "correct",
    "abs_error_sum",
)
# Each metric as a ratio of a user's totals, (denominator, numerator): the per-user
# variance of a metric reads the sums over users of the products of these
UNIT_RATIOS: dict[str, tuple[str, str]] = {
    "accuracy": ("labelled", "correct"),
    "mae": ("labelled", "abs_error_sum"),
    "error_rate": ("requests", "errors"),
    "log_latency": ("answered", "log_latency_sum"),
}
UNIT_PRODUCTS = sorted(
    {pair for x, y in UNIT_RATIOS.values() for pair in ((x, x), (x, y), (y, x), (y, y))}
)


class UnitMoments(BaseModel):
    """Sums over sticky users of products of a user's totals in one (variant, epoch) and in
    another: ``products["labelled*correct"]`` is the sum over users of the user's labelled
    requests in ``(variant, epoch)`` times their correct ones in ``(other_variant,
    other_epoch)``. Both orders of every pair are present; ``(variant, epoch)`` paired with
    itself gives the within-cell sums of squares. A user's requests are correlated (they
    share the user's own accuracy), so these, not per-request counts, give the variance
    of sticky traffic (:mod:`serve_app.stats.clustered`)."""

    variant: str
    epoch: int
    other_variant: str
    other_epoch: int
    users: int
    products: dict[str, float]


class PairedCell(BaseModel):
    """A shadow against the live variant that answered the same labelled requests.

    Classifiers: the four agreement counts of (live correct, shadow correct). Regressors:
    the sum and sum of squares of ``|shadow error| - |live error|`` over ``pairs``.
    """

    shadow: str
    epoch: int
    bucket: int
    pairs: int
    both_correct: int = 0
    live_only: int = 0
    shadow_only: int = 0
    neither: int = 0
    diff_sum: float = 0.0
    diff_sq: float = 0.0


class ExperimentAggregates(BaseModel):
    """Everything the statistics need about one experiment."""

    experiment: str
    classification: bool
    control: str | None
    bucket_s: float
    cells: list[Cell]
    epochs: list[Epoch]
    units: list[EpochUnits] = []
    unit_moments: list[UnitMoments] = []
    units_in_two_arms: dict[int, int] = Field(
        {}, description="epoch -> sticky users served by two variants within it (a defect)"
    )
    paired: list[PairedCell] = []
    label_delay_s: list[float] = Field(
        [], description="delays between prediction and feedback, a recent sample"
    )
