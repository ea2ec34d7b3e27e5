"""The ``rollout`` block of the ingress ``user_config``: a candidate earns its traffic step by
step, gated by the experiment's statistics (issue 16).

Pure pydantic, validated like :mod:`serve_app.config.ingress`, so a bad block is refused with a
message naming the mistake. Whether ``candidate`` is a live variant other than the control
is checked where the whole config is known (:class:`serve_app.config.ingress.IngressConfig`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.config.names import VARIANT_NAME

MAX_STEPS = 10  # the sample-ratio check's share of the rollback error budget depends on it


class Guardrails(BaseModel):
    """Limits the candidate must stay within against the control; None turns one off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_rate_increase: float | None = Field(
        0.01,
        ge=0,
        lt=1,
        description="error rate (requests whose model raised) the candidate may add, absolute",
    )
    max_p95_latency_ratio: float | None = Field(
        1.5,
        ge=1,
        description="candidate latency over the control's; judged on the geometric-mean"
        " ratio, which the aggregates give (see serve_app.rollout.rule)",
    )
    max_psi: float | None = Field(
        0.25, gt=0, description="largest input PSI of the candidate's traffic (descriptive)"
    )


class RolloutConfig(BaseModel):
    """Steps of the candidate's share of live traffic, what each step needs before it can
    pass, and what success does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str = Field(
        pattern=VARIANT_NAME,
        description="a live variant, not the control (checked by IngressConfig)",
    )
    steps: list[float] = Field(
        description="candidate's share of live traffic, in percent, strictly increasing"
    )
    min_scored_per_step: int = Field(
        200, gt=0, description="labelled requests of the candidate before a step can pass"
    )
    min_step_s: float = Field(60.0, gt=0, description="seconds before a step can pass")
    non_inferiority_margin: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="accuracy the candidate may lose (classifiers, absolute) or mean absolute"
        " error it may add (regressors, relative to the control's)",
    )
    guardrails: Guardrails = Field(default_factory=Guardrails)
    on_success: Literal["promote", "hold"] = Field(
        "promote",
        description="promote: move the control's alias to the candidate's version; hold: keep"
        " the last step's weights",
    )
    evaluation_interval_s: float = Field(10.0, gt=0, description="seconds between decisions")

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("steps must list at least one share, e.g. [5, 25, 50]")
        if len(steps) > MAX_STEPS:
            raise ValueError(f"steps lists {len(steps)} shares; at most {MAX_STEPS} are allowed")
        for i, share in enumerate(steps):
            if not 0 < share <= 100:
                raise ValueError(f"step {i + 1} is {share:g}%; each step must be in (0, 100]")
        for i, (before, after) in enumerate(pairwise(steps)):
            if after <= before:
                raise ValueError(
                    f"steps must be strictly increasing; step {i + 2} ({after:g}%) does not"
                    f" exceed step {i + 1} ({before:g}%)"
                )
        return steps

    @property
    def last_step(self) -> int:
        return len(self.steps) - 1
