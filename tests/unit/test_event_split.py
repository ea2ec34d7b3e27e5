"""The pure pieces of training on production events: time bounds, the URL shown in
messages, the split by time, and the `dataset.events` config block."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raysplit.core.errors import RaysplitError
from raysplit.eventstore.labelled import iso_time, parse_time_bound, redact_url
from tune.config import load_spec
from tune.datasets import Task, check_folds, split_by_time, with_training_rows

NOW = datetime(2026, 5, 8, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds_back"),
    [("90s", 90), ("15m", 900), ("36h", 36 * 3600), ("7d", 7 * 86400), (" 1.5h ", 5400)],
)
def test_durations_are_back_from_now(text: str, seconds_back: float) -> None:
    assert parse_time_bound(text, NOW) == NOW - seconds_back


@pytest.mark.parametrize(
    "text",
    ["2026-05-01T00:00:00Z", "2026-05-01T02:00:00+02:00", "2026-05-01T00:00:00", "2026-05-01"],
)
def test_times_are_iso_8601_and_utc_without_an_offset(text: str) -> None:
    assert parse_time_bound(text, NOW) == datetime(2026, 5, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("text", ["7", "7 days", "-1d", "yesterday", "2026-13-01"])
def test_other_times_are_refused_with_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="a duration back from now"):
        parse_time_bound(text, NOW)


def test_times_are_shown_in_utc() -> None:
    assert iso_time(NOW) == "2026-05-08T12:00:00Z"
    assert iso_time(NOW + 0.25) == "2026-05-08T12:00:00.250Z"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/events", "postgresql://app:***@db:5432/events"),
        ("postgresql+psycopg://app@db/events", "postgresql+psycopg://app@db/events"),
        ("sqlite:////data/events.db", "sqlite:////data/events.db"),
        ("s3cret", "<not a database URL>"),
    ],
)
def test_urls_are_shown_without_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def frame(times: list[float]) -> tuple[pd.DataFrame, pd.Series]:
    ids = list(range(len(times)))
    return pd.DataFrame({"x": [float(i) for i in ids]}), pd.Series([f"c{i % 2}" for i in ids])


def test_the_test_split_is_exactly_the_newest_rows_in_time_order() -> None:
    times = [50.0, 10.0, 40.0, 20.0, 30.0, 60.0, 0.0, 70.0, 90.0, 80.0]
    features, target = frame(times)
    split = split_by_time(features, target, times, 0.3, "events:x")
    by_time = sorted(range(10), key=lambda i: times[i])
    assert split.x_train["x"].tolist() == [float(i) for i in by_time[:7]]
    assert split.x_test["x"].tolist() == [float(i) for i in by_time[7:]]  # 70, 80, 90
    assert split.y_test.tolist() == [target[i] for i in by_time[7:]]
    assert max(times[i] for i in by_time[:7]) < min(times[i] for i in by_time[7:])


def test_the_test_size_rounds_up_and_ties_keep_their_order() -> None:
    times = [1.0, 1.0, 1.0, 1.0, 1.0]
    features, target = frame(times)
    split = split_by_time(features, target, times, 0.3, "events:x")  # ceil(1.5) = 2
    assert split.x_train["x"].tolist() == [0.0, 1.0, 2.0]
    assert split.x_test["x"].tolist() == [3.0, 4.0]


def test_too_few_rows_to_split_are_refused() -> None:
    features, target = frame([1.0])
    with pytest.raises(RaysplitError, match="1 rows cannot be split"):
        split_by_time(features, target, [1.0], 0.2, "events:x")


def test_original_rows_join_training_only() -> None:
    times = [0.0, 1.0, 2.0, 3.0]
    features, target = frame(times)
    split = split_by_time(features, target, times, 0.25, "events:x")
    joined = with_training_rows(split, pd.DataFrame({"x": [-1.0, -2.0]}), pd.Series(["a", "b"]))
    assert joined.x_train["x"].tolist() == [-1.0, -2.0, 0.0, 1.0, 2.0]
    assert joined.y_train.tolist() == ["a", "b", "c0", "c1", "c0"]
    assert joined.x_test.equals(split.x_test) and joined.y_test.equals(split.y_test)


def test_folds_need_rows_per_class_and_two_classes() -> None:
    with pytest.raises(RaysplitError, match="class 'b' has 2 training rows, fewer than cv_folds=3"):
        check_folds(pd.Series(["a"] * 5 + ["b"] * 2), Task.CLASSIFICATION, 3, "events:x")
    with pytest.raises(RaysplitError, match="only one class"):
        check_folds(pd.Series(["a"] * 5), Task.CLASSIFICATION, 3, "events:x")
    with pytest.raises(RaysplitError, match="5 training rows are too few for cv_folds=3"):
        check_folds(pd.Series([1.0] * 5), Task.REGRESSION, 3, "events:x")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "retrain.yaml"
    path.write_text(text)
    return path


CONFIG = """
dataset:
  name: iris
  events:
    experiment: iris-ab
    since: 2026-05-01      # YAML reads this as a date
    until: 2026-05-08T00:00:00Z
    min_rows: 500
register:
  model_name: iris
"""


def test_the_events_block_and_its_overrides(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, CONFIG), {"dataset.events.min_rows": 100})
    events = spec.dataset.events
    assert events is not None
    assert (events.experiment, events.min_rows, events.url) == ("iris-ab", 100, None)
    assert events.since == "2026-05-01" and events.until is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset.events.since": 7}, "dataset.events.since: 7 has no unit"),
        ({"dataset.events.since": "last week"}, "'last week' is not a time"),
        (
            {"dataset.events.since": "1d", "dataset.events.until": "7d"},
            r"since \(1d\) must be before until \(7d\)",
        ),
        ({"dataset.events.url": "not a url"}, "dataset.events.url: not a database URL"),
        ({"dataset.events.min_rows": 0}, "dataset.events.min_rows"),
        ({"dataset.events.window": "7d"}, "dataset.events.window: Extra inputs"),
    ],
)
def test_bad_events_blocks_are_refused_in_one_line(
    tmp_path: Path, change: dict, message: str
) -> None:
    with pytest.raises(RaysplitError, match=message) as error:
        load_spec(write(tmp_path, CONFIG), change)
    assert "\n" not in str(error.value)


def test_events_alone_need_the_model_name(tmp_path: Path) -> None:
    data = yaml.safe_load(CONFIG)
    del data["dataset"]["name"]
    path = write(tmp_path, yaml.safe_dump(data))
    assert load_spec(path).dataset.name is None
    with pytest.raises(RaysplitError, match=r"register\.model_name is needed"):
        load_spec(path, {"register.model_name": None})
