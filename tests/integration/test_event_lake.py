"""The Parquet lake beside the event database: export, prune and the reads of the lake,
against real SQLite and PostgreSQL stores and real files (docs/event_lake.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from raysplit.cli.main import main
from raysplit.core.errors import RaysplitError
from raysplit.core.events import AllocationEvent
from raysplit.core.settings import Locations
from raysplit.eventstore.labelled import count_labelled_events, read_labelled_events
from raysplit.eventstore.lake import files as lake_files
from raysplit.eventstore.lake.archive import export, prune
from raysplit.eventstore.lake.reader import labelled_from_lake
from raysplit.eventstore.partitions import day_of, partition_days
from raysplit.eventstore.schema import feedback, predictions
from raysplit.eventstore.store import EventStore
from tests.conftest import REPO
from tests.events import feedback as feedback_event
from tests.events import prediction
from tests.integration.test_event_training_data import T0, events_spec, features, live_rows, query
from tune.retraining.event_rows import load_event_split

pytestmark = pytest.mark.integration

CUTOFF = T0 + 60 * 15 + 2  # r015's prediction is before it, its label after
UNTIL = T0 + 3600
ROLLUPS = (
    "raysplit_cells",
    "raysplit_units",
    "raysplit_pairs",
    "raysplit_allocations",
    "raysplit_rollouts",
    "raysplit_rollout_decisions",
)
FILE_NAME = re.compile(r"^\d{13}-[0-9a-f]{32}\.parquet$")
PARTITION_DIR = re.compile(r"^(predictions/experiment=[^/]+|feedback)/day=\d{4}-\d\d-\d\d$")


def rows() -> list:
    """The training-data tests' month of serving, an allocation for the rollups, and a
    label that arrived (by its clock) before its prediction."""
    return [
        AllocationEvent("iris-ab", "a1", {"champion": 0.75, "challenger": 0.25}, T0 - 7200),
        *live_rows(),
        prediction("late", created_at=T0 + 1000, inputs=[features(3)], predictions=["setosa"]),
        feedback_event("late", "setosa", at=T0 + 100),
    ]


@pytest.fixture
def store(store_url: str) -> str:
    events = EventStore(store_url)
    events.write(rows())
    events.dispose()
    return store_url


def stored(url: str, table: sa.Table, where: Any = None) -> list[dict[str, Any]]:
    """The table's rows as the lake reads them back: no row id, sorted by the lake's
    order (time, then key)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        query = sa.select(table) if where is None else sa.select(table).where(where)
        found = [dict(r._mapping) for r in conn.execute(query)]
    engine.dispose()
    for row in found:
        row.pop("id", None)
    keys = ("request_id", "variant") if table is predictions else ("request_id",)
    return sorted(found, key=lambda r: (r["created_at"], *(r[k] for k in keys)))


def from_lake(lake: str, kind: lake_files.Kind) -> list[dict[str, Any]]:
    found = lake_files.read_table(lake, kind).drop_columns(["day"]).to_pylist()
    for row in found:
        for name in lake_files.JSON_COLUMNS & row.keys():
            row[name] = lake_files.decode(row[name])
    return found


def snapshot(url: str, tables: tuple[str, ...]) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {
            t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
            for t in tables
        }
    engine.dispose()
    return found


def test_export_then_read_gives_exactly_the_rows_and_twice_is_once(
    store: str, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    counts = export(store, lake, None, UNTIL)
    assert (counts.predictions, counts.feedback) == (38, 36)
    assert from_lake(lake, "predictions") == stored(store, predictions)
    assert from_lake(lake, "feedback") == stored(store, feedback)
    again = export(store, lake, None, UNTIL, chunk_rows=4)  # 10 chunks, the same rows
    assert again.files > counts.files
    assert from_lake(lake, "predictions") == stored(store, predictions)
    assert from_lake(lake, "feedback") == stored(store, feedback)
    files = list((tmp_path / "lake").rglob("*"))
    assert not [f for f in files if f.name.startswith(".")]  # no temporary file is left
    parquet = [f.relative_to(tmp_path / "lake") for f in files if f.suffix == ".parquet"]
    assert len(parquet) == counts.files + again.files
    for path in parquet:
        assert FILE_NAME.match(path.name), path
        assert PARTITION_DIR.match(str(path.parent)), path
    first = next(p for p in parquet if p.parts[0] == "predictions")
    assert "experiment" not in pq.read_schema(tmp_path / "lake" / first).names  # the path's


def test_an_export_window_is_half_open_and_takes_its_predictions_labels(
    store: str, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    export(store, lake, T0 + 60 * 10, T0 + 60 * 12 + 2)  # r010, r011, r012
    found = lake_files.read_table(lake, "predictions", columns=["request_id"])
    assert found["request_id"].to_pylist() == ["r010", "r011", "r012"]
    labels = lake_files.read_table(lake, "feedback", columns=["request_id", "created_at"])
    # r012's label came at T0 + 725, after the window: it travels with its prediction
    assert labels["request_id"].to_pylist() == ["r010", "r011", "r012"]
    window = lake_files.read_table(lake, "predictions", since=T0 + 600, until=T0 + 660)
    assert window["request_id"].to_pylist() == ["r010"]
    with pytest.raises(RaysplitError, match="the export window is empty"):
        export(store, lake, T0 + 60, T0)


def test_prune_archives_then_deletes_in_batches_and_keeps_the_rollups(
    store: str, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    rollups = snapshot(store, ROLLUPS)
    assert rollups["raysplit_cells"] and rollups["raysplit_allocations"]
    recent_predictions = stored(store, predictions, predictions.c.created_at >= CUTOFF)
    recent_feedback = stored(store, feedback, feedback.c.created_at >= CUTOFF)
    old_predictions = stored(store, predictions, predictions.c.created_at < CUTOFF)
    before = read_labelled_events(query(store, since=None))
    counted = count_labelled_events(query(store, since=None))
    now = time.time()

    counts = prune(store, lake, now - CUTOFF, now=now, batch_rows=4)

    assert counts.archived is not None and counts.archived.predictions == len(old_predictions)
    assert counts.archived.feedback == 20 + 1 + 1  # with "late", and r015's later label
    assert (counts.predictions, counts.feedback) == (23, 20)
    if store.startswith("postgresql"):  # "old" left with its day (Dec 31)
        assert (counts.partitions, counts.batches) == (1, 6 + 6)
    else:  # 4 rows a transaction: 23 predictions, 21 old labels
        assert (counts.partitions, counts.batches) == (0, 6 + 6)
    assert snapshot(store, ROLLUPS) == rollups  # the report reads these: unchanged
    assert stored(store, predictions) == recent_predictions
    # a label older than the cutoff stays while its prediction is stored
    assert stored(store, feedback) == [
        *stored(store, feedback, feedback.c.request_id == "late"),
        *recent_feedback,
    ]
    assert from_lake(lake, "predictions") == old_predictions

    assert read_labelled_events(query(store, since=None)).rows < before.rows
    after = read_labelled_events(query(store, since=None, lake=lake))
    assert after.request_ids == before.request_ids and "r015" in after.request_ids
    assert after.digest == before.digest
    assert (after.skipped_width, after.kind) == (before.skipped_width, before.kind)
    assert count_labelled_events(query(store, since=None, lake=lake)).rows == counted.rows
    # an experiment whose rows have all left the store is known by the lake
    with pytest.raises(RaysplitError, match="no predictions for experiment 'wine-ab'"):
        read_labelled_events(query(store, experiment="wine-ab", since=None))
    wine = read_labelled_events(query(store, experiment="wine-ab", since=None, lake=lake))
    assert wine.request_ids == ("other",)

    again = prune(store, lake, now - CUTOFF, now=now)  # nothing left to archive or delete
    assert (again.predictions, again.feedback, again.archived.predictions) == (0, 0, 0)


DAY = 86_400


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_prune_drops_whole_day_partitions_and_late_or_repeated_events_still_count_once(
    store_url: str, tmp_path: Path
) -> None:
    """PostgreSQL: the days of predictions wholly before the cutoff leave as partitions
    (old labels are deleted, but one whose prediction is still stored stays); a writer
    that knew a dropped day still stores a late event of it; a request id repeated on
    another day is stored once, though no unique key spans the partitions."""
    writer = EventStore(store_url)
    writer.write(
        [
            prediction("a3", created_at=T0 - 3 * DAY + 60, predictions=["setosa"]),
            feedback_event("a3", "setosa", at=T0 - 3 * DAY + 120),
            prediction("a2", created_at=T0 - 2 * DAY + 60, predictions=["setosa"]),
            feedback_event("a2", "virginica", at=T0 - 2 * DAY + 120),
            feedback_event("y", "setosa", at=T0 - 2 * DAY + 200),  # before its prediction
            prediction("y", created_at=T0 + 60, predictions=["setosa"]),
            prediction("a0", created_at=T0 + 120, predictions=["setosa"]),
        ]
    )
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        before = set(partition_days(conn, predictions))
    assert {day_of(T0) - 3, day_of(T0) - 2, day_of(T0)} <= before
    rollups = snapshot(store_url, ROLLUPS)
    lake = str(tmp_path / "lake")
    now = time.time()

    counts = prune(store_url, lake, now - T0, now=now)

    with engine.connect() as conn:
        kept = set(partition_days(conn, predictions))
        keys = conn.execute(sa.text("SELECT request_id FROM raysplit_prediction_keys"))
        assert sorted(keys.scalars()) == ["a0", "y"]
    assert not {d for d in kept if d < day_of(T0)} and day_of(T0) in kept
    assert counts.partitions == 3  # days -3, -2 and -1 (made ahead by the writer, empty)
    assert (counts.predictions, counts.feedback) == (2, 2)
    assert snapshot(store_url, ROLLUPS) == rollups
    assert [r["request_id"] for r in stored(store_url, feedback)] == ["y"]
    assert sorted(r["request_id"] for r in from_lake(lake, "predictions")) == ["a2", "a3"]

    # the writer still thinks day -3 exists; its late event recreates it
    writer.write([prediction("late3", created_at=T0 - 3 * DAY + 500, predictions=["setosa"])])
    # a repeat of a0 a day later, and of y's label: stored once, counted once
    writer.write(
        [
            prediction("a0", created_at=T0 + DAY + 5, predictions=["virginica"]),
            feedback_event("y", "virginica", at=T0 + DAY + 6),
        ]
    )
    ids = [r["request_id"] for r in stored(store_url, predictions)]
    assert sorted(ids) == ["a0", "late3", "y"]
    requests = snapshot(store_url, ("raysplit_cells",))["raysplit_cells"]
    writer.dispose()
    engine.dispose()
    assert sum(row[6] for row in requests) == 5  # a3 and a2 (still counted), y, a0, late3
    correct = sum(row[11] for row in requests)
    assert correct == 2  # a3 and y, each once (a2 was wrong; y's repeat changed nothing)


def test_prune_deletes_nothing_when_the_lake_cannot_be_written(store: str, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    everything = stored(store, predictions)
    with pytest.raises(RaysplitError, match=r"event lake .*a-file: cannot write predictions"):
        prune(store, str(blocked), time.time() - CUTOFF)
    with pytest.raises(RaysplitError, match="cannot open it as a pyarrow filesystem URI"):
        prune(store, "nosuchfs://bucket/events", time.time() - CUTOFF)
    assert stored(store, predictions) == everything
    counts = prune(store, None, time.time() - CUTOFF)  # no archive: asked for
    assert (counts.archived, counts.predictions) == (None, 23)


def test_the_retrain_reads_the_lake_after_a_prune(store: str, home: Path, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    locations = Locations.resolve()
    _, split, summary = load_event_split(events_spec(store), locations, cv_folds=5)
    prune(store, lake, time.time() - CUTOFF)
    spec = events_spec(store, lake=lake)
    _, split_after, after = load_event_split(spec, locations, cv_folds=5)
    assert (after.rows, after.digest) == (summary.rows, summary.digest)
    assert split_after.x_test.equals(split.x_test)
    assert after.tags()["raysplit.events.lake"] == lake
    with pytest.raises(RaysplitError, match="fewer than min_rows=20"):
        load_event_split(events_spec(store), locations, cv_folds=5)  # the store alone


def test_odd_experiment_names_and_partition_pruning(tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    name = "team a/iris=2 100%"
    lake_files.write_predictions(
        lake,
        [
            prediction(f"d{day}", experiment=name, created_at=T0 + 86_400 * day).row()
            for day in range(3)
        ],
    )
    assert lake_files.experiments(lake) == [name]
    days = lake_files.day_dirs(lake_files.open_lake(lake), name, T0 + 86_400, T0 + 86_400 * 2)
    assert [d.rsplit("/", 1)[1] for d in days] == ["day=2026-01-02", "day=2026-01-03"]
    found = lake_files.read_table(lake, "predictions", experiment=name, since=T0 + 86_400)
    assert found["request_id"].to_pylist() == ["d1", "d2"]
    assert found["experiment"].to_pylist() == [name, name]


RAY_SCRIPT = """
import json, sys
import ray
from raysplit.eventstore.lake.reader import labelled_from_lake
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
         _temp_dir=sys.argv[2])
try:
    lake, until = sys.argv[1], float(sys.argv[3])
    with_ray = labelled_from_lake(lake, "iris-ab", None, until)  # Ray is initialised
    alone = labelled_from_lake(lake, "iris-ab", None, until, use_ray=False)
    print(json.dumps({"ray": with_ray.to_pylist(), "pyarrow": alone.to_pylist()}))
finally:
    ray.shutdown()
"""


def test_ray_data_and_pyarrow_read_the_same_labelled_rows(tmp_path: Path) -> None:
    """One local Ray in a process of its own (this module runs beside the session
    cluster, and must not join it)."""
    lake = str(tmp_path / "lake")
    events = rows()[1:]
    for half in (events[: len(events) // 2], events[len(events) // 2 :], events):  # repeats
        lake_files.write_predictions(lake, [e.row() for e in half if hasattr(e, "variant")])
        lake_files.write_feedback(lake, [e.row() for e in half if not hasattr(e, "variant")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    temp_dir = f"/tmp/rsl-{os.getpid()}"
    try:
        result = subprocess.run(
            [sys.executable, "-c", RAY_SCRIPT, lake, temp_dir, str(UNTIL)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=REPO,
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)  # the local Ray's session files
    assert result.returncode == 0, result.stderr[-3000:]
    read = json.loads(result.stdout.strip().splitlines()[-1])
    assert read["ray"] == read["pyarrow"]
    ids = [r["request_id"] for r in read["pyarrow"]]
    times = [r["created_at"] for r in read["pyarrow"]]
    assert times == sorted(times)
    expected = {f"r{i:03d}" for i in range(30)} | {"old", "late", "narrow"}
    assert set(ids) == expected and len(ids) == len(expected)  # each once
    assert labelled_from_lake(lake, "iris-ab", None, UNTIL).to_pylist() == read["pyarrow"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_commands_end_to_end(
    store: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAYSPLIT_LAKE_URI", raising=False)
    lake = str(tmp_path / "lake")
    window = ("--since", "2025-12-31T00:00:00Z", "--until", "2026-01-02T00:00:00Z")
    code, out, _ = run(capsys, "export", *window, "--lake", lake, "--store", store)
    assert code == 0 and "exported 38 predictions and 36 feedback rows" in out

    def events(*flags: str) -> tuple[int, str, str]:
        return run(capsys, "events", "--experiment", "iris-ab", "--lake", lake, *flags)

    code, out, _ = events(*window, "--format", "json", "--limit", "0")
    shown = json.loads(out)
    assert code == 0 and len(shown) == 37  # every iris-ab prediction, shadow and failed too
    first = next(r for r in shown if r["request_id"] == "r002")
    assert (first["label"], first["inputs"]) == ("virginica", [features(2)])
    assert next(r for r in shown if r["request_id"] == "nolabel")["label"] is None

    code, out, _ = events("--since", "2025-12-31T00:00:00Z", "--limit", "3")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split()[:3] == ["TIME", "REQUEST_ID", "VARIANT"]
    assert [line.split()[1] for line in lines[1:4]] == ["r027", "r028", "r029"]
    assert lines[-1] == "3 predictions"
    code, out, _ = events("--since", "2025-12-31T00:00:00Z", "--format", "csv", "--limit", "2")
    assert code == 0 and out.splitlines()[0].startswith("request_id,variant,created_at")
    assert len(out.strip().splitlines()) == 3

    # the deployment's retention, set once, is what a scheduled `raysplit prune` applies
    monkeypatch.setenv("RAYSPLIT_RETENTION", "2026-01-01T00:15:02Z")
    code, out, _ = run(capsys, "prune", "--lake", lake, "--store", store)
    assert code == 0, out
    assert "deleted 23 predictions and 20 feedback rows older than 2026-01-01T00:15:02Z" in out
    assert "the rollups (the report) are unchanged" in out

    code, out, _ = run(capsys, "export", "--since", "3d", "--store", store)  # the default lake
    assert code == 0 and str(home / "lake") in out
    assert (home / "lake").is_dir() or "exported 0 predictions" in out
    code, out, _ = run(capsys, "info")
    assert json.loads(out)["lake_uri"] == str(home / "lake")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
        (["export", "--since", "1d", "--until", "2d"], "--since (1d) must be before --until (2d)"),
        (["prune", "--older-than", "soon"], "--older-than: 'soon' is not a time"),
        (["prune"], "give --older-than AGE (e.g. 30d) or set RAYSPLIT_RETENTION"),
        (["prune", "--older-than", "1d", "--no-archive", "--lake", "x"], "not both"),
        (["events", "--experiment", "iris-ab", "--limit", "-1"], "--limit"),
        (["export", "--since", "1d", "--lake", "nosuchfs://b/e"], "event lake nosuchfs://b/e"),
        (["events", "--experiment", "iris-abc"], "has no predictions for experiment 'iris-abc'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str],
    message: str,
    store: str,
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lake = str(tmp_path / "lake")
    export(store, lake, None, UNTIL)
    extra = [] if "--lake" in argv or "--no-archive" in argv else ["--lake", lake]
    extra += ["--store", store] if argv[0] != "events" else []
    code, out, err = run(capsys, *argv, *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysplit: error: ") and message in lines[0]
    if "iris-abc" in message:
        assert "it holds: iris-ab, wine-ab" in lines[0]
