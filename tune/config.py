"""The search config file (`raysplit tune --config FILE`) as validated pydantic models.

Everything a search needs is checked here, before Ray starts or MLflow is written to:
family names, search-space syntax, parameter names and values (with scikit-learn's own
messages), metric against task.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from raysplit.core.errors import RaysplitError, describe_validation_error
from raysplit.eventstore.labelled import DEFAULT_MIN_ROWS, TIME_HELP, parse_time_bound
from tune.datasets import Task
from tune.families import FAMILIES, FAMILY_NAMES, Family, families_for
from tune.scoring import DEFAULT_METRIC, METRICS, Metric

RANGE_KINDS = ("uniform", "loguniform", "randint")
SPACE_HELP = (
    "a search-space entry is a constant or one of {choice: [v1, v2, ...]},"
    " {uniform: [low, high]}, {loguniform: [low, high]}, {randint: [low, high]}"
)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class Distribution(BaseModel):
    """One hyperparameter's search space, written compactly in YAML (`{loguniform: [a, b]}`).

    Integer ranges (`randint`) include both ends.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["constant", "choice", "uniform", "loguniform", "randint"]
    value: Any = None
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_compact(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" in data:
            return data
        if isinstance(data, list):
            raise ValueError(f"{SPACE_HELP}; got the bare list {data} (did you mean choice?)")
        if not isinstance(data, dict):
            return {"kind": "constant", "value": data}
        if len(data) != 1:
            raise ValueError(f"{SPACE_HELP}; got {data}")
        ((kind, args),) = data.items()
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"choice needs a non-empty list of values; got {args!r}")
            return {"kind": "choice", "values": tuple(args)}
        if kind in RANGE_KINDS:
            if (
                not isinstance(args, list)
                or len(args) != 2
                or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
            ):
                raise ValueError(f"{kind} needs [low, high] as two numbers; got {args!r}")
            return {"kind": kind, "low": args[0], "high": args[1]}
        raise ValueError(f"unknown search-space kind '{kind}'; {SPACE_HELP}")

    @model_validator(mode="after")
    def _check_range(self) -> Distribution:
        if self.kind not in RANGE_KINDS:
            return self
        assert self.low is not None and self.high is not None
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"{self.kind} bounds must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"{self.kind} needs low < high; got [{self.low}, {self.high}]")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0; got {self.low}")
        if self.kind == "randint" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"randint needs integer bounds; got [{self.low}, {self.high}]")
        return self

    def examples(self) -> list[Any]:
        """The values that bound this space, to check against the estimator's constraints."""
        if self.kind == "constant":
            return [self.value]
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "randint":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    @property
    def finite(self) -> bool:
        return self.kind in ("constant", "choice")


class EventsConfig(BaseModel):
    """Labelled production predictions from the event store as training rows
    (:mod:`tune.retraining.event_rows`); times are checked here, resolved when the search starts."""

    model_config = ConfigDict(extra="forbid")

    experiment: str = Field(min_length=1, description="the serving experiment to learn from")
    url: str | None = Field(None, description="event store (default: RAYSPLIT_EVENT_STORE_URL)")
    lake: str | None = Field(
        None,
        min_length=1,
        description="Parquet lake (URI or path) whose rows join the store's: what a prune"
        " archived (docs/event_lake.md); the store's rows win",
    )
    since: str | None = Field(None, description="a duration back from now (7d) or a time")
    until: str | None = Field(None, description="same forms; default: now")
    min_rows: int = Field(
        DEFAULT_MIN_ROWS, ge=1, description="refuse to train on fewer labelled rows"
    )
    model_uri: str | None = Field(
        None, description="whose signature orders the features (default: NAME@champion)"
    )

    @field_validator("since", "until", mode="before")
    @classmethod
    def _time_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-05-01 as a date and an unquoted time as a datetime
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"{value} has no unit; {TIME_HELP}")
        return value

    @field_validator("since", "until")
    @classmethod
    def _time_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_time_bound(value, time.time())
        return value

    @field_validator("url")
    @classmethod
    def _url_form(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                make_url(value)
            except (ArgumentError, ValueError):
                raise ValueError("not a database URL (e.g. postgresql://user@host/db)") from None
        return value

    @model_validator(mode="after")
    def _window_order(self) -> EventsConfig:
        if self.since is not None and self.until is not None:
            now = time.time()  # durations are back from the same moment
            if parse_time_bound(self.since, now) >= parse_time_bound(self.until, now):
                raise ValueError(f"since ({self.since}) must be before until ({self.until})")
        return self


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="bundled dataset, or a label for a file")
    path: Path | None = Field(None, description="CSV or Parquet file")
    target: str | None = Field(None, description="target column of the file")
    task: Task | None = Field(None, description="override the task inferred from the target")
    test_size: float = Field(0.2, gt=0, lt=1, description="with events: the newest share")
    seed: int = 42
    events: EventsConfig | None = Field(
        None, description="train on labelled production predictions (with name/path: joined)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if self.name is None and self.path is None and self.events is None:
            raise ValueError("give a bundled dataset 'name', a file 'path' or 'events'")
        return self


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    families: dict[str, dict[str, Distribution]] | None = Field(
        None, description="family -> {parameter: space}; an empty mapping takes the defaults"
    )
    metric: str | None = Field(None, description="accuracy, f1_macro, roc_auc, r2 or rmse")
    cv_folds: int = Field(5, ge=2, le=20)
    num_samples: int = Field(20, ge=1, le=10_000)
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(0.5, gt=0)
    algorithm: Literal["random", "grid", "optuna"] = "random"
    early_stopping: Literal["asha", "none"] = "asha"
    seed: int = 0

    @field_validator("families", mode="before")
    @classmethod
    def _known_families(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = {name: {} for name in value}
        if isinstance(value, dict):
            if not value:
                raise ValueError("list at least one model family")
            for name, space in value.items():
                if name not in FAMILY_NAMES:
                    raise ValueError(
                        f"unknown model family '{name}'; known: {', '.join(FAMILY_NAMES)}"
                    )
                if space is None:
                    value[name] = {}
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        if value is not None and value not in METRICS:
            raise ValueError(f"unknown metric '{value}'; known: {', '.join(METRICS)}")
        return value


class GateConfig(BaseModel):
    """``register.gate`` in a tune config: who to beat, and by how much."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    against: tuple[str, ...] = Field(
        ("champion", "challenger"),
        description="aliases whose versions the new one must beat on the new test slice",
    )
    margin: float = Field(
        0.01,
        gt=0,
        description="how much better the new version's test score must be, in the metric's"
        " units (higher for accuracy and r2, lower for rmse)",
    )

    @field_validator("against")
    @classmethod
    def _aliases(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alias in value:
            if not re.fullmatch(ALIAS_PATTERN, alias):
                raise ValueError(f"'{alias}' is not an alias name")
        if len(set(value)) != len(value):
            raise ValueError(f"aliases repeat in {list(value)}")
        return value


class RegisterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str | None = Field(
        None, pattern=NAME_PATTERN, description="registered model name (default: dataset name)"
    )
    alias: str = Field("challenger", pattern=ALIAS_PATTERN)
    gate: GateConfig | None = Field(
        None,
        description="take the alias only when beating these aliases' versions on the new"
        " test split (retraining); without it the alias always moves",
    )

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # MLflow reserves `latest` and version-like `v3` as alias names
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            raise ValueError(f"alias '{value}' is reserved by MLflow; choose another name")
        return value


class TuneSpec(BaseModel):
    """The whole `raysplit tune` config file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    experiment: str | None = Field(None, description="MLflow experiment (default: raysplit-NAME)")
    dataset: DatasetConfig
    search: SearchConfig = SearchConfig()
    # `register` in YAML; renamed here because BaseModel has a `register` attribute
    registration: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")

    @model_validator(mode="after")
    def _events_name_the_model(self) -> TuneSpec:
        data = self.dataset
        alone = data.events is not None and data.name is None and data.path is None
        if alone and self.registration.model_name is None:
            raise ValueError(
                "register.model_name is needed when the dataset is events alone: it names"
                " the registered model, and its @champion's signature orders the features"
            )
        return self


@dataclass(frozen=True)
class SearchPlan:
    """A spec resolved against its dataset's task: concrete families, spaces and metric."""

    task: Task
    metric: Metric
    spaces: dict[str, dict[str, Distribution]]
    families: dict[str, Family]


def _check_values(family: Family, space: dict[str, Distribution]) -> None:
    """Check names and bounding values with scikit-learn's own parameter validation."""
    known = family.parameter_names()
    for param, dist in space.items():
        if param not in known:
            raise RaysplitError(
                f"search.families.{family.name}: unknown parameter '{param}';"
                f" known: {', '.join(sorted(known))}"
            )
        for example in dist.examples():
            estimator = family.estimator().set_params(**{param: example})
            try:
                estimator._validate_params()
            except (ValueError, TypeError) as exc:
                raise RaysplitError(f"search.families.{family.name}.{param}: {exc}") from exc


def resolve_plan(spec: SearchConfig, task: Task) -> SearchPlan:
    """Fill in defaults for ``task`` and check everything the trials will rely on."""
    metric_name = spec.metric or DEFAULT_METRIC[task]
    metric = METRICS[metric_name]
    if metric.task is not task:
        valid = ", ".join(m.name for m in METRICS.values() if m.task is task)
        raise RaysplitError(f"metric '{metric_name}' is not for {task}; use one of: {valid}")
    requested = spec.families or {name: {} for name in families_for(task)}
    spaces: dict[str, dict[str, Distribution]] = {}
    families: dict[str, Family] = {}
    for name, overrides in requested.items():
        family = FAMILIES.get((task, name))
        if family is None:
            raise RaysplitError(
                f"model family '{name}' does not do {task}; {task} families:"
                f" {', '.join(families_for(task))}"
            )
        space = {k: Distribution.model_validate(v) for k, v in family.default_space.items()}
        space.update(overrides)
        _check_values(family, space)
        if spec.algorithm == "grid":
            continuous = [p for p, d in space.items() if not d.finite]
            if continuous:
                raise RaysplitError(
                    f"search.families.{name}: grid search needs finite values, but"
                    f" {', '.join(continuous)} {'is' if len(continuous) == 1 else 'are'}"
                    " a range; give {choice: [...]} or use algorithm random or optuna"
                )
        spaces[name] = space
        families[name] = family
    return SearchPlan(task=task, metric=metric, spaces=spaces, families=families)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise RaysplitError(f"override {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``search.cv_folds=3`` -> ``("search.cv_folds", 3)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RaysplitError(f"override '{text}' is not KEY=VALUE (e.g. search.num_samples=10)")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RaysplitError(f"override '{text}': value is not valid YAML") from exc


def load_raw(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config file as a mapping with ``overrides`` applied, not yet validated: what a
    retrain job receives (its driver validates it on the cluster); relative dataset paths
    are made relative to the file."""
    if not path.is_file():
        raise RaysplitError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RaysplitError(f"config {path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise RaysplitError(f"config {path}: expected a mapping at the top level")
    dataset = data.get("dataset")
    if isinstance(dataset, dict) and dataset.get("path"):
        dataset["path"] = str((path.parent / str(dataset["path"])).resolve())
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return data


def load_spec(path: Path, overrides: dict[str, Any] | None = None) -> TuneSpec:
    """Read and validate a config file; relative dataset paths are relative to the file."""
    data = load_raw(path, overrides)
    try:
        return TuneSpec.model_validate(data)
    except ValidationError as exc:
        raise RaysplitError(describe_validation_error(exc, f"config {path.name}")) from exc
