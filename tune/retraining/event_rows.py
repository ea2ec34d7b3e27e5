"""Training data from the event store: labelled production predictions, split by time.

A retrain should learn from what the live variants were asked and what users said was
right, and be scored on the newest of those rows: the model will be judged on the
future, so the test split is the future relative to its training rows. The original
dataset, when the config names one, joins the training rows only.

:func:`load_event_split` is the one entry point: ``run_search`` uses it, and a retrain
job can call it again to score other models (the champion) on the same test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.exceptions import MlflowException

from raysplit.core.errors import RaysplitError
from raysplit.core.settings import Locations
from raysplit.eventstore.labelled import (
    EventQuery,
    LabelKind,
    LabelledEvents,
    iso_time,
    read_labelled_events,
    require_rows,
    window_bounds,
)
from raysplit.eventstore.lake.files import shown_uri
from tune.config import DatasetConfig
from tune.datasets import (
    Dataset,
    Split,
    Task,
    check_folds,
    load_dataset,
    split_by_time,
    with_training_rows,
)
from tune.tracking import connect

SOURCE_TYPE = "raysplit_event_store"


@dataclass(frozen=True)
class EventSourceSummary:
    """Where the event rows came from, as the search run and the model version record it."""

    url: str  # redacted
    experiment: str
    since: float | None
    until: float
    rows: int  # event rows used, train and test
    test_rows: int  # the newest event rows
    digest: str  # of the event rows read (LabelledEvents.digest)
    skipped_width: int
    skipped_invalid: int
    feature_names: tuple[str, ...]
    features_from: str  # the joined dataset's name, or the model URI whose signature
    original: str | None = None  # the joined dataset's name
    original_rows: int = 0  # its rows, all in training
    lake: str | None = None  # the Parquet lake read beside the store (credentials cut out)

    @property
    def input_name(self) -> str:
        """The MLflow dataset input's name: ``events:iris-ab`` or ``iris+events:iris-ab``."""
        name = f"events:{self.experiment}"
        return f"{self.original}+{name}" if self.original else name

    def tags(self) -> dict[str, str]:
        """Tags for the search run and the registered version: enough to find the rows
        again (the window is resolved, so ``since: 7d`` is recorded as a time)."""
        return {
            "raysplit.data_source": "events",
            "raysplit.events.url": self.url,
            "raysplit.events.experiment": self.experiment,
            "raysplit.events.since": "none" if self.since is None else iso_time(self.since),
            "raysplit.events.until": iso_time(self.until),
            "raysplit.events.rows": str(self.rows),
            "raysplit.events.test_rows": str(self.test_rows),
            "raysplit.events.digest": self.digest,
            "raysplit.events.skipped": str(self.skipped_width + self.skipped_invalid),
            "raysplit.events.joined": self.original or "none",
            "raysplit.events.lake": self.lake or "none",
        }


class EventStoreSource(DatasetSource):
    """The MLflow dataset source of event rows: the store (redacted), experiment, window,
    row count and digest, shown with the run's dataset inputs. It cannot load the rows back
    (the store keeps moving); the digest tells whether a re-read matches."""

    def __init__(self, summary: dict[str, Any]):
        self.summary = summary

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self) -> Any:
        raise NotImplementedError(
            "re-read the rows with tune.retraining.event_rows.load_event_split"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> EventStoreSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> EventStoreSource:
        return cls(dict(source_dict))

    @classmethod
    def of(cls, summary: EventSourceSummary) -> EventStoreSource:
        tags = summary.tags()
        return cls({key.removeprefix("raysplit.events."): value for key, value in tags.items()})


def signature_feature_names(model_uri: str, locations: Locations) -> list[str]:
    """The input names, in order, of a logged model's signature: the order serving
    stored each event's inputs in."""
    connect(locations)
    try:
        signature = mlflow.models.get_model_info(model_uri).signature
    except (MlflowException, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise RaysplitError(
            f"dataset.events.model_uri {model_uri}: cannot read the model ({reason});"
            " set events.model_uri, or name the original dataset to take its features"
        ) from exc
    names = signature.inputs.input_names() if signature is not None else []
    if not names or any(not isinstance(n, str) for n in names):
        raise RaysplitError(
            f"dataset.events.model_uri {model_uri}: the model has no named input signature;"
            " name the original dataset to take its features"
        )
    return list(names)


def _kind(task: Task | None) -> LabelKind | None:
    if task is None:
        return None
    return "label" if task is Task.CLASSIFICATION else "value"


def _targets(events: LabelledEvents, original: Dataset | None) -> pd.Series:
    """The event targets, typed like the original dataset's so the two concatenate into
    one set of classes (feedback may say ``3`` where the dataset says ``"3"``)."""
    values = list(events.targets)
    if events.kind == "value":
        return pd.Series(values, dtype="float64", name="target")
    if original is not None and pd.api.types.is_numeric_dtype(original.target):
        try:
            numbers = pd.to_numeric(pd.Series(values, dtype=object))
        except (ValueError, TypeError) as exc:
            raise RaysplitError(
                f"event store {events.url}: experiment '{events.experiment}' has feedback"
                f" labels that are not numbers, but dataset {original.name}'s target is: {exc}"
            ) from exc
        whole = bool((numbers % 1 == 0).all())
        if pd.api.types.is_integer_dtype(original.target) and whole:
            numbers = numbers.astype(original.target.dtype)  # integer classes stay integers
        return numbers.rename("target")
    if original is not None or len({type(v) for v in values}) > 1:
        values = [str(v) for v in values]
    return pd.Series(values, dtype=object, name="target")


def events_frame(
    events: LabelledEvents, names: list[str], original: Dataset | None
) -> tuple[pd.DataFrame, pd.Series]:
    """The event rows as features (named as the model's inputs) and target, oldest first."""
    features = pd.DataFrame(list(events.inputs), columns=names, dtype="float64")
    return features, _targets(events, original)


def _task(spec: DatasetConfig, events: LabelledEvents, original: Dataset | None) -> Task:
    if original is not None:
        return original.task
    if spec.task is not None:
        return spec.task
    return Task.CLASSIFICATION if events.kind == "label" else Task.REGRESSION


def load_event_split(
    spec: DatasetConfig,
    locations: Locations,
    *,
    cv_folds: int,
    model_name: str | None = None,
    now: float | None = None,
) -> tuple[Dataset, Split, EventSourceSummary]:
    """The dataset, its time split and what was read, for ``spec.events``.

    Features come from the original dataset when ``spec`` names one (its rows then join
    training), else from the signature of ``events.model_uri`` (default
    ``models:/<model_name>@champion``). The test split is the newest ``test_size`` of the
    event rows. Refuses (RaysplitError) whatever the search could not use, naming it.
    """
    events_spec = spec.events
    if events_spec is None:
        raise ValueError("load_event_split needs a dataset with events")
    original = None
    if spec.name is not None or spec.path is not None:
        original = load_dataset(spec.name, spec.path, spec.target, spec.task)
        names, features_from = list(original.features.columns), original.name
    else:
        features_from = events_spec.model_uri or f"models:/{model_name}@champion"
        names = signature_feature_names(features_from, locations)
    now = time.time() if now is None else now
    since, until = window_bounds(events_spec.since, events_spec.until, now)
    task = original.task if original is not None else spec.task
    events = read_labelled_events(
        EventQuery(
            url=events_spec.url or locations.event_store_url,
            experiment=events_spec.experiment,
            since=since,
            until=until,
            width=len(names),
            kind=_kind(task),
            lake=events_spec.lake,
        )
    )
    require_rows(events, events_spec.min_rows)
    features, target = events_frame(events, names, original)
    source = f"events:{events.experiment}"
    split = split_by_time(features, target, events.created_at, spec.test_size, source)
    if original is not None:
        split = with_training_rows(split, original.features, original.target)
        features = pd.concat([original.features, features], ignore_index=True)
        target = pd.concat([original.target.rename("target"), target], ignore_index=True)
    task = _task(spec, events, original)
    check_folds(split.y_train, task, cv_folds, source)
    summary = EventSourceSummary(
        url=events.url,
        experiment=events.experiment,
        since=since,
        until=until,
        rows=events.rows,
        test_rows=len(split.y_test),
        digest=events.digest,
        skipped_width=events.skipped_width,
        skipped_invalid=events.skipped_invalid,
        feature_names=tuple(names),
        features_from=features_from,
        original=original.name if original is not None else None,
        original_rows=len(original.target) if original is not None else 0,
        lake=None if events_spec.lake is None else shown_uri(events_spec.lake),
    )
    name = original.name if original is not None else source
    return Dataset(name=name, features=features, target=target, task=task), split, summary
