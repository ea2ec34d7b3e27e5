"""The ingress deployment's ``user_config``: variants, weights and routing options.

Validated here, as pure pydantic, so a bad ``serve deploy`` is refused in ``reconfigure()``
with a message naming the mistake, before any live state is touched.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.config.names import VARIANT_NAME
from serve_app.config.rollout import RolloutConfig

MODEL_URI = re.compile(
    r"^(models:/[^/@]+(@[A-Za-z0-9_-]+|/\d+)|runs:/[0-9a-f]+/.+|models:/m-[0-9a-f]+)$"
)


class VariantConfig(BaseModel):
    """One model version taking part in the experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=VARIANT_NAME, description="what responses and metrics call it")
    model_uri: str = Field(
        description="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
    )
    weight: float = Field(0.0, ge=0, description="share of live traffic, relative to the others")
    shadow: bool = Field(False, description="gets a copy of requests; never answers")

    @field_validator("model_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not MODEL_URI.match(value):
            raise ValueError(
                f"model_uri '{value}' is not models:/NAME@ALIAS, models:/NAME/VERSION"
                " or runs:/RUN_ID/PATH"
            )
        return value

    @model_validator(mode="after")
    def _shadow_takes_no_traffic(self) -> VariantConfig:
        if self.shadow and self.weight > 0:
            raise ValueError(f"variant '{self.name}' is a shadow and cannot have a weight")
        return self


class IngressConfig(BaseModel):
    """Everything ``serve deploy`` can change without restarting a replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field("default", min_length=1, description="names the A/B experiment")
    sticky_key: str = Field(
        "x-user-id", min_length=1, description="header whose value pins a user to a variant"
    )
    salt: str = Field("", description="change it to reshuffle sticky users between variants")
    allow_override: bool = Field(True, description="honour X-Variant to force a variant")
    control: str | None = Field(None, description="the variant others are compared against")
    min_detectable_effect: float | None = Field(
        None,
        gt=0,
        description="smallest difference worth detecting, in the metric's units (default:"
        " 0.05 accuracy, or a tenth of the control's mean absolute error)",
    )
    max_batch_rows: int = Field(1000, ge=1, le=100_000, description="rows per /predict call")
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="larger request bodies get 413 before any of them is parsed",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="a client that has not sent its whole body by then gets 408",
    )
    batch_requests: int = Field(
        64,
        ge=1,
        le=1024,
        description="concurrent single-row requests answered by one model call per variant"
        " (1: one call per request)",
    )
    alias_refresh_s: float = Field(
        30.0,
        ge=0,
        description="how often replicas re-resolve models:/NAME@ALIAS URIs (0: only on deploy)",
    )
    record_events: bool = Field(
        True,
        description="write every prediction and feedback to the event store (off: no"
        " experiment report; metrics still count)",
    )
    report_interval_s: float = Field(
        30.0,
        ge=0,
        description="how often each replica refreshes the report's Prometheus gauges"
        " (quality, SRM, sequential p-values, drift); 0 turns them off",
    )
    request_log_every: int = Field(
        1,
        ge=1,
        le=1_000_000,
        description="log one line for one in this many successful requests (sampled_every"
        " in its fields); every refusal and error is logged whatever this says",
    )
    lake_append_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="also append every stored prediction and feedback to the Parquet lake"
        " (RAYSPLIT_LAKE_URI) at most this many seconds after it is stored (sooner once"
        " 20,000 rows wait), so the lake holds today's events without an export; 0: off"
        " (docs/event_lake.md)",
    )
    durable_events: bool = Field(
        False,
        description="answer a prediction only once its event is in the database (group"
        " commit, up to durable_timeout_s); the X-Raysplit-Event header says stored or queued."
        " Off: events are written within event_flush_interval_s of the answer",
    )
    durable_timeout_s: float = Field(
        2.0, gt=0, le=60, description="longest a durable answer waits for the database"
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="sites (scheme://host[:port]) whose pages may send requests that change"
        " state (POST): every other site's are refused with 403, keys or not",
    )
    allow_pickle: bool = Field(
        False,
        description="load models serialised with pickle/cloudpickle; unpickling runs any code"
        " the file names, so only for registries whose every writer you trust",
    )
    event_flush_interval_s: float = Field(
        0.5,
        ge=0.01,
        le=3600,
        description="how often queued events are written; what a SIGKILL can lose is what"
        " queued in this time (reported as raysplit_events_queued)",
    )
    variants: list[VariantConfig] = Field(min_length=1)
    rollout: RolloutConfig | None = Field(
        None,
        description="move the candidate's share through steps gated by the experiment's"
        " statistics; the controller owns the live weights while it runs (docs/rollouts.md)",
    )
    retrain: dict[str, Any] | None = Field(
        None,
        description="the tune config (docs/retraining.md) POST /retrain submits as a Ray job;"
        " a request body overrides its keys. The job validates it: serving does not import"
        " training code. Without it, POST /retrain is refused",
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"https?://[^/\s]+", value):
                raise ValueError(
                    f"allowed origin '{value}' is not scheme://host[:port] (no path), e.g."
                    " https://ops.example.com"
                )
        return [v.lower() for v in values]

    @field_validator("sticky_key")
    @classmethod
    def _lower_header(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> IngressConfig:
        names = [v.name for v in self.variants]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(repeated)}")
        live = [v for v in self.variants if not v.shadow]
        if not live:
            raise ValueError("at least one variant must be live (not shadow)")
        if sum(v.weight for v in live) <= 0:
            raise ValueError("live variant weights are all zero; give at least one a weight")
        if self.control is not None and self.control not in names:
            raise ValueError(f"control '{self.control}' is not a variant; variants: {names}")
        if self.rollout is not None:
            candidate = self.rollout.candidate
            if candidate not in {v.name for v in live}:
                raise ValueError(
                    f"rollout candidate '{candidate}' is not a live variant; live:"
                    f" {[v.name for v in live]}"
                )
            if candidate == self.control_variant:
                raise ValueError(
                    f"rollout candidate '{candidate}' is the control; set `control` to the"
                    " variant it is compared against"
                )
        return self

    @property
    def live(self) -> list[VariantConfig]:
        return [v for v in self.variants if not v.shadow]

    @property
    def shadows(self) -> list[VariantConfig]:
        return [v for v in self.variants if v.shadow]

    @property
    def control_variant(self) -> str:
        return self.control or self.live[0].name
