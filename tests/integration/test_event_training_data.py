"""Training rows read back from a real event store (SQLite and PostgreSQL), written the way
serving writes them: which predictions count as labelled training rows, the refusals'
messages, the time split, the join with the original dataset, and what MLflow records."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from raysplit.core.errors import RaysplitError
from raysplit.core.events import FeedbackEvent
from raysplit.core.settings import Locations
from raysplit.eventstore.labelled import (
    EventQuery,
    count_labelled_events,
    read_labelled_events,
    require_rows,
)
from raysplit.eventstore.store import EventStore
from tests.conftest import free_port
from tests.events import feedback, prediction
from tests.integration.test_cli import run_cli
from tests.models import iris, log_model, seed_embedded_store
from tune.config import DatasetConfig, EventsConfig
from tune.datasets import Task
from tune.model_logging import log_inputs
from tune.retraining.event_rows import SOURCE_TYPE, load_event_split
from tune.tracking import connect

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPECIES = ("setosa", "versicolor", "virginica")
LIVE = 30  # labelled live single-row predictions of iris-ab, one a minute from T0


def features(i: int) -> list[float]:
    return [5.0 + i / 10, 3.0, 1.0 + (i % 3), 0.2 + (i % 3)]


def live_rows() -> list:
    """What a month of serving left behind: the rows to learn from, and every kind of row
    that must be left out."""
    events: list = []
    for i in range(LIVE):
        rid = f"r{i:03d}"
        variant = "champion" if i % 4 else "challenger"
        events.append(
            prediction(
                rid,
                variant,
                created_at=T0 + 60 * i,
                inputs=[features(i)],
                predictions=[SPECIES[i % 3]],
            )
        )
        events.append(feedback(rid, SPECIES[i % 3], at=T0 + 60 * i + 5))
    events += [
        # a shadow's copy of a labelled request: its answer is not what users were served
        prediction("r001", "shadow-hgb", shadow=True, created_at=T0 + 61, inputs=[features(1)]),
        # the model failed: nothing was answered
        prediction("err", created_at=T0 + 10, outcome="error", error="boom", predictions=[]),
        feedback("err", "setosa", at=T0 + 11),
        # two rows under one label
        prediction("multi", created_at=T0 + 20, inputs=[features(1), features(2)]),
        feedback("multi", "setosa", at=T0 + 21),
        # never labelled
        prediction("nolabel", created_at=T0 + 30),
        # another experiment
        prediction("other", experiment="wine-ab", created_at=T0 + 40),
        feedback("other", "setosa", at=T0 + 41),
        # before the window
        prediction("old", created_at=T0 - 3600),
        feedback("old", "setosa", at=T0 - 3500),
        # a model with three inputs served this experiment once
        prediction("narrow", created_at=T0 + 50, inputs=[[1.0, 2.0, 3.0]]),
        feedback("narrow", "setosa", at=T0 + 51),
    ]
    return events


@pytest.fixture
def store(store_url: str) -> str:
    events = EventStore(store_url)
    events.write(live_rows())
    events.dispose()
    return store_url


def query(url: str, **changes: object) -> EventQuery:
    values: dict = {
        "url": url,
        "experiment": "iris-ab",
        "since": T0 - 60,
        "until": T0 + 3600,
        "width": 4,
    }
    return EventQuery(**{**values, **changes})


def test_only_answered_live_single_row_labelled_predictions_are_read(store: str) -> None:
    events = read_labelled_events(query(store))
    assert events.request_ids == tuple(f"r{i:03d}" for i in range(LIVE))  # oldest first
    assert events.created_at == tuple(T0 + 60 * i for i in range(LIVE))
    assert events.inputs[7] == tuple(features(7))
    assert events.targets[:4] == ("setosa", "versicolor", "virginica", "setosa")
    assert events.kind == "label"  # inferred: the feedback holds labels
    assert (events.skipped_width, events.skipped_invalid) == (1, 0)  # "narrow", counted
    assert "1 skipped: input width is not the model's 4" in events.skipped_text()
    expected = hashlib.sha256()
    for row in zip(events.request_ids, events.inputs, events.targets, strict=True):
        expected.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    assert events.digest == expected.hexdigest()  # the same on SQLite and PostgreSQL


def test_the_window_is_half_open(store: str) -> None:
    events = read_labelled_events(query(store, since=T0 + 60 * 10, until=T0 + 60 * 20))
    assert events.request_ids == tuple(f"r{i:03d}" for i in range(10, 20))
    everything = read_labelled_events(query(store, since=None))
    assert "old" in everything.request_ids


def test_the_database_count_is_what_the_reader_considers(store: str) -> None:
    """The ingress counts before it submits; the count includes the rows the reader then
    skips (the narrow one), and refuses what the reader refuses."""
    events = read_labelled_events(query(store))
    counted = count_labelled_events(query(store))
    assert counted.rows == events.rows + events.skipped_width + events.skipped_invalid
    window = count_labelled_events(query(store, since=T0 + 60 * 10, until=T0 + 60 * 20))
    assert window.rows == 10
    with pytest.raises(RaysplitError, match="fewer than min_rows=11"):
        require_rows(window, 11)
    with pytest.raises(RaysplitError, match="no predictions for experiment 'iris-abc'"):
        count_labelled_events(query(store, experiment="iris-abc"))


def test_too_few_rows_are_refused_saying_how_many_and_where(store: str) -> None:
    events = read_labelled_events(query(store, since=T0 + 60 * 25))
    with pytest.raises(RaysplitError) as error:
        require_rows(events, 500)
    message = str(error.value)
    assert "\n" not in message
    assert "experiment 'iris-ab' has 5 labelled single-row predictions" in message
    assert "from 2026-01-01T00:25:00Z to 2026-01-01T01:00:00Z" in message
    assert "fewer than min_rows=500" in message


def test_an_unknown_experiment_names_the_ones_the_store_holds(store: str) -> None:
    with pytest.raises(
        RaysplitError, match="no predictions for experiment 'iris-abc'; it holds: iris-ab, wine-ab"
    ):
        read_labelled_events(query(store, experiment="iris-abc"))


def test_regression_feedback_takes_the_value(store_url: str) -> None:
    events = EventStore(store_url)
    rows: list = []
    for i in range(6):
        rows.append(
            prediction(
                f"v{i}",
                experiment="diabetes-ab",
                created_at=T0 + i,
                inputs=[[float(i)] * 3],
                predictions=[1.0],
            )
        )
        rows.append(FeedbackEvent(request_id=f"v{i}", created_at=T0 + i + 1, value=10.0 * i))
    rows.append(
        prediction(
            "nan",
            experiment="diabetes-ab",
            created_at=T0 + 9,
            inputs=[[1.0] * 3],
            predictions=[1.0],
        )
    )
    rows.append(FeedbackEvent(request_id="nan", created_at=T0 + 10, label="high"))
    events.write(rows)
    events.dispose()
    read = read_labelled_events(query(store_url, experiment="diabetes-ab", width=3, kind="value"))
    assert read.kind == "value"
    assert read.targets == tuple(10.0 * i for i in range(6))  # the label-only row is not labelled
    with pytest.raises(RaysplitError, match=r"holds both labels \(1\) and values \(6\)"):
        read_labelled_events(query(store_url, experiment="diabetes-ab", width=3))


def test_the_password_never_appears(events_postgres: str) -> None:
    EventStore(events_postgres).write(live_rows())
    with_password = events_postgres.replace("postgres@", "postgres:s3cret-pw@")  # trust auth
    with pytest.raises(RaysplitError) as error:
        read_labelled_events(query(with_password, experiment="nope"))
    assert "postgres:***@127.0.0.1" in str(error.value)
    closed = f"postgresql://postgres:s3cret-pw@127.0.0.1:{free_port()}/test"
    with pytest.raises(RaysplitError) as error:
        read_labelled_events(query(closed))
    message = str(error.value)
    assert message.startswith(
        f"event store postgresql://postgres:***@127.0.0.1:{closed.split(':')[3]}"
    )
    assert "is unreachable" in message
    assert "s3cret-pw" not in message and "\n" not in message


def test_a_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(RaysplitError, match="no such SQLite file"):
        read_labelled_events(query(f"sqlite:///{path}"))
    assert not path.exists()


def events_spec(url: str, **changes: object) -> DatasetConfig:
    events = {
        "experiment": "iris-ab",
        "url": url,
        "since": "2025-12-31T23:59:00Z",
        "until": "2026-01-01T01:00:00Z",
        "min_rows": 20,
    }
    return DatasetConfig(name="iris", test_size=0.2, events=EventsConfig(**{**events, **changes}))


def test_joined_with_the_original_dataset_the_newest_events_are_the_test_split(
    store: str, home: Path
) -> None:
    dataset, split, summary = load_event_split(events_spec(store), Locations.resolve(), cv_folds=5)
    original, _ = iris()
    assert dataset.task is Task.CLASSIFICATION
    assert list(split.x_train.columns) == list(original.columns)
    assert len(split.x_train) == 150 + 24 and len(split.x_test) == 6
    assert split.x_train.iloc[:150].equals(original)  # every original row trains
    assert split.x_test.to_numpy().tolist() == [features(i) for i in range(24, 30)]
    assert split.y_test.tolist() == [SPECIES[i % 3] for i in range(24, 30)]
    assert (summary.rows, summary.test_rows, summary.original_rows) == (30, 6, 150)
    assert summary.input_name == "iris+events:iris-ab"
    tags = summary.tags()
    assert tags["raysplit.data_source"] == "events"
    assert tags["raysplit.events.since"] == "2025-12-31T23:59:00Z"
    assert tags["raysplit.events.until"] == "2026-01-01T01:00:00Z"
    assert tags["raysplit.events.rows"] == "30" and tags["raysplit.events.skipped"] == "1"
    assert len(dataset.target) == 180


def test_events_alone_take_the_feature_order_from_the_champion(store: str, home: Path) -> None:
    locations = Locations.resolve()
    seed_embedded_store(locations)
    connect(locations)
    x, y = iris()
    log_model(LogisticRegression(max_iter=300), x, y, name="iris", alias="champion")
    spec = events_spec(store).model_copy(update={"name": None})
    dataset, split, summary = load_event_split(spec, locations, cv_folds=2, model_name="iris")
    assert summary.features_from == "models:/iris@champion"
    assert list(split.x_train.columns) == list(x.columns)
    assert (len(split.x_train), len(split.x_test)) == (24, 6)
    assert dataset.name == "events:iris-ab" and summary.input_name == "events:iris-ab"
    with pytest.raises(RaysplitError, match=r"models:/iris@nobody: cannot read the model"):
        load_event_split(
            events_spec(store, model_uri="models:/iris@nobody").model_copy(update={"name": None}),
            locations,
            cv_folds=2,
        )


def test_the_search_run_records_the_source(store: str, home: Path) -> None:
    locations = Locations.resolve()
    seed_embedded_store(locations)
    connect(locations)
    _, split, summary = load_event_split(events_spec(store), locations, cv_folds=5)
    with mlflow.start_run() as run:
        log_inputs(split, summary.input_name, summary)
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == [
        "iris+events:iris-ab-testing",
        "iris+events:iris-ab-training",
    ]
    assert {i.dataset.source_type for i in inputs} == {SOURCE_TYPE}
    source = json.loads(inputs[0].dataset.source)
    assert source["url"] == summary.url and source["digest"] == summary.digest
    assert source["rows"] == "30" and source["until"] == "2026-01-01T01:00:00Z"


def test_the_cli_refuses_too_few_rows_in_one_line(store: str, home: Path, tmp_path: Path) -> None:
    config = tmp_path / "retrain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": {
                    "name": "iris",
                    "events": {
                        "experiment": "iris-ab",
                        "url": store,
                        "since": "2025-12-31T00:00:00Z",
                    },
                },
                "search": {"num_samples": 1},
            }
        )
    )
    result: subprocess.CompletedProcess = run_cli(
        "tune",
        "--config",
        str(config),
        "dataset.events.min_rows=1000",
        env={"RAYSPLIT_HOME": str(home)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fewer than min_rows=1000" in lines[0], result.stderr
    assert "has 31 labelled single-row predictions" in lines[0]  # "old" too
    assert not (home / "mlflow.db").exists()  # refused before MLflow was touched
