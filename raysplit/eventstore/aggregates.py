"""What the experiment report is computed from: counts and sums the database aggregates
(SQL ``GROUP BY``), never the event rows themselves.

The grain is one variant, one allocation epoch, one assignment kind and one time bucket.
An *allocation epoch* is a period with one set of live weights, variants and salt: within
it assignment is independent of time, so effects are estimated within epochs and combined,
and the sample-ratio check compares each epoch's counts with that epoch's own shares.
Everything here is additive over buckets and epochs except distinct sticky units, which
come per (variant, epoch) on their own.
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

    @property
    def answered(self) -> int:
        return self.requests - self.errors


class Epoch(BaseModel):
    """An allocation: the shares each live variant was configured to get."""

    epoch: int
    shares: dict[str, float] = Field(description="live variant -> configured share (sum 1)")
    started_at: float


class EpochUnits(BaseModel):
    """Distinct sticky units (users) a variant saw within one epoch."""

    variant: str
    epoch: int
    units: int


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
    paired: list[PairedCell] = []
    label_delay_s: list[float] = Field(
        [], description="delays between prediction and feedback, a recent sample"
    )
