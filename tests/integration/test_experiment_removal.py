"""Archiving and deleting an experiment (`raysplit experiments`), against real SQLite and
PostgreSQL stores (docs/removal.md)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from raysplit.cli.main import main
from raysplit.core.events import AllocationEvent, AssignmentKind, Event
from raysplit.eventstore.partitions import DAY_S, day_of, partition_days
from raysplit.eventstore.removal import (
    EXPERIMENT_TABLES,
    DeleteIncomplete,
    archive_experiment,
    delete_experiment,
    holdings,
    list_experiments,
)
from raysplit.eventstore.schema import (
    experiment_archive,
    feedback,
    leases,
    metadata,
    predictions,
    rollout_decisions,
    rollouts,
)
from raysplit.eventstore.store import EventStore
from serve_app.report.timeline import experiment_list
from tests.conftest import free_port
from tests.events import feedback as feedback_event
from tests.events import prediction

pytestmark = pytest.mark.integration

T0 = 1_772_323_200.0  # 2026-03-01T00:00:00Z
KEPT, GONE = "iris-ab", "old-ab"
DAYS = 3
SHARED = "shared-request"  # one request id both experiments saw (client-chosen ids repeat)


def serving(experiment: str, day: int, n: int) -> list[Event]:
    """``n`` requests of one experiment on one day: split and sticky traffic over two
    allocations, a shadow copy of each, and labels for most of them."""
    events: list[Event] = []
    start = T0 + day * DAY_S + 3600
    for i in range(n):
        rid = f"{experiment}-d{day}-{i}"
        at = start + 30 * i
        allocation = "a1" if i % 2 else "a2"
        variant = "champion" if i % 3 else "challenger"
        sticky = i % 4 == 0
        events += [
            prediction(
                rid,
                variant,
                experiment=experiment,
                created_at=at,
                allocation=allocation,
                predictions=["setosa" if i % 5 else "virginica"],
                assignment=AssignmentKind.STICKY if sticky else AssignmentKind.SPLIT,
                unit_hash=f"user{i % 3}" if sticky else None,
            ),
            prediction(
                rid,
                "shadow-rf",
                shadow=True,
                experiment=experiment,
                created_at=at + 0.5,
                allocation=allocation,
                assignment=AssignmentKind.SHADOW,
            ),
        ]
        if i % 4 != 3:
            events.append(feedback_event(rid, "setosa", at=at + 5))
    return events


def fill(url: str) -> None:
    """Two experiments on the same days, each with allocations, a rollout and its log,
    and leases; one request id in both."""
    store = EventStore(url)
    for experiment in (KEPT, GONE):
        store.write(
            [
                AllocationEvent(experiment, "a1", {"champion": 0.5, "challenger": 0.5}, T0),
                AllocationEvent(experiment, "a2", {"champion": 0.9, "challenger": 0.1}, T0 + 60),
            ]
        )
        for day in range(DAYS):
            store.write(serving(experiment, day, 7))
        # the store keeps one row per (request id, variant), whatever the experiment
        variant = "champion" if experiment == KEPT else "challenger"
        store.write([prediction(SHARED, variant, experiment=experiment, created_at=T0 + 7200)])
        with store.engine.begin() as conn:
            conn.execute(
                rollouts.insert().values(
                    experiment=experiment,
                    rollout_id=f"r-{experiment}",
                    seq=2,
                    phase="running",
                    record={"experiment": experiment},
                    configured_at=T0,
                )
            )
            conn.execute(
                rollout_decisions.insert(),
                [
                    {
                        "experiment": experiment,
                        "rollout_id": f"r-{experiment}",
                        "at": T0 + step,
                        "seq": step,
                        "step": step,
                        "kind": "advance",
                        "share": 0.1 * step,
                        "share_after": 0.1 * (step + 1),
                        "reason": "gate passed",
                        "actor": "controller",
                    }
                    for step in range(1, 4)
                ],
            )
        for lease in (experiment, f"rollout:{experiment}"):
            assert store.claim_lease(lease, "replica-1", 30.0)
    store.write([feedback_event(SHARED, "setosa", at=T0 + 7300)])
    store.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[str]:
    fill(store_url)
    yield store_url


EXPERIMENT_COLUMN_TABLES = [t for t in metadata.sorted_tables if "experiment" in t.c]


def rows_of(url: str, experiment: str) -> dict[str, list[tuple]]:
    """Every row of ``experiment`` in every table with an experiment column (ids left
    out: a rollup row's id is not its identity), and the feedback of its requests."""
    engine = sa.create_engine(url)
    found: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())  # SQLite has no prediction keys
        for table in EXPERIMENT_COLUMN_TABLES:
            if table.name not in present:
                continue
            columns = [c for c in table.columns if c.name != "id"]
            found[table.name] = sorted(
                map(
                    tuple,
                    conn.execute(sa.select(*columns).where(table.c.experiment == experiment)),
                ),
                key=repr,
            )
        ids = sa.select(predictions.c.request_id).where(predictions.c.experiment == experiment)
        found[feedback.name] = sorted(
            map(tuple, conn.execute(sa.select(feedback).where(feedback.c.request_id.in_(ids)))),
            key=repr,
        )
        found[leases.name] = sorted(
            conn.execute(
                sa.select(leases.c.name).where(
                    leases.c.name.in_([experiment, f"rollout:{experiment}"])
                )
            ).scalars()
        )
    engine.dispose()
    return found


def aggregates(url: str, experiment: str) -> Any:
    store = EventStore(url)
    try:
        return store.queries(experiment, classification=True).aggregates("champion")
    finally:
        store.dispose()


def test_every_experiment_table_is_emptied_by_a_delete() -> None:
    """A table added with an experiment column must be added to the delete too."""
    assert {t.name for t in EXPERIMENT_COLUMN_TABLES} == {t.name for t in EXPERIMENT_TABLES}


def test_an_archived_experiment_leaves_the_page_list_and_its_report_is_unchanged(
    store: str,
) -> None:
    before = aggregates(store, GONE)
    first = archive_experiment(store, GONE, now=T0 + 9 * DAY_S)
    assert archive_experiment(store, GONE, now=T0 + 10 * DAY_S) == first  # twice is once

    events = EventStore(store)
    spans = events.experiment_spans()
    events.dispose()
    assert [e.experiment for e in experiment_list(spans, current=KEPT).experiments] == [KEPT]
    # the experiment a replica serves stays on its page even when archived
    listed = experiment_list(spans, current=GONE).experiments
    assert sorted(e.experiment for e in listed) == [KEPT, GONE]
    assert aggregates(store, GONE) == before  # its report reads exactly as before

    shown = {e.experiment: e for e in list_experiments(store)}
    assert shown[GONE].archived and not shown[KEPT].archived
    assert shown[GONE].predictions == shown[KEPT].predictions == 3 * 7 + 1
    assert shown[GONE].labelled > 0
    assert shown[GONE].first_at is not None and shown[GONE].first_at <= T0 + 3600


def test_a_delete_leaves_no_row_of_it_and_every_other_row_as_it_was(store: str) -> None:
    kept_rows, kept_report = rows_of(store, KEPT), aggregates(store, KEPT)
    held = rows_of(store, GONE)
    assert all(rows for name, rows in held.items() if name != experiment_archive.name)

    counts = delete_experiment(store, GONE, batch_rows=4)

    left = rows_of(store, GONE)
    assert {name: rows for name, rows in left.items() if rows} == {}
    assert holdings(store, GONE) == {}
    assert rows_of(store, KEPT) == kept_rows
    assert aggregates(store, KEPT) == kept_report
    assert counts.rows["raysplit_predictions"] == 2 * 3 * 7 + 1  # live and shadow, + shared
    assert counts.batches > 10  # 43 predictions at 4 a batch, and the rest
    # the shared request's label stays with the experiment that keeps its prediction
    engine = sa.create_engine(store)
    with engine.connect() as conn:
        labels = conn.execute(sa.select(feedback.c.request_id)).scalars().all()
    engine.dispose()
    assert SHARED in labels
    assert not [rid for rid in labels if rid.startswith(GONE)]
    assert [e.experiment for e in list_experiments(store)] == [KEPT]

    again = delete_experiment(store, GONE, batch_rows=4)  # idempotent
    assert again.total == 0 and again.batches == 0
    assert rows_of(store, KEPT) == kept_rows


def test_a_delete_empties_its_rows_in_every_day_partition_and_keeps_the_others(
    store: str,
) -> None:
    """PostgreSQL keeps raw predictions in one partition per day: the deleted
    experiment's rows go from each, the other experiment's on the same days stay."""
    engine = sa.create_engine(store)

    def per_day() -> dict[tuple[int, str], int]:
        if engine.dialect.name != "postgresql":  # SQLite: the same days, by created_at
            with engine.connect() as conn:
                rows = conn.execute(sa.select(predictions.c.created_at, predictions.c.experiment))
                counted: dict[tuple[int, str], int] = {}
                for at, experiment in rows:
                    key = (day_of(at), experiment)
                    counted[key] = counted.get(key, 0) + 1
                return counted
        with engine.connect() as conn:
            days = partition_days(conn, predictions)
            counted = {}
            for day, name in days.items():
                for experiment, n in conn.exec_driver_sql(
                    f"SELECT experiment, count(*) FROM {name} GROUP BY experiment"
                ):
                    counted[(day, experiment)] = n
            return counted

    before = per_day()
    days = {day_of(T0) + d for d in range(DAYS)}
    assert {d for d, e in before if e == GONE} == days == {d for d, e in before if e == KEPT}

    delete_experiment(store, GONE, batch_rows=5)

    after = per_day()
    engine.dispose()
    assert {k: n for k, n in after.items() if k[1] == GONE} == {}
    assert after == {k: n for k, n in before.items() if k[1] == KEPT}


# PostgreSQL only: SQLite locks the whole database, never one table, so a delete there
# stops before its first row or not at all
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_delete_that_stops_midway_names_what_is_left_and_a_rerun_finishes_it(
    store: str,
) -> None:
    """PostgreSQL, where another session can lock one table: the rollup's cells are held
    against writes, so the delete stops there, after the raw rows went."""
    impatient = sa.create_engine(store, connect_args={"options": "-c lock_timeout=300"})
    holder = sa.create_engine(store)
    with holder.connect() as conn, conn.begin():
        conn.exec_driver_sql("LOCK TABLE raysplit_cells IN SHARE MODE")  # reads go on
        with pytest.raises(DeleteIncomplete) as stopped:
            delete_experiment(impatient, GONE, batch_rows=4)
    message = str(stopped.value)
    assert f"deleting experiment '{GONE}' stopped at raysplit_cells" in message
    assert "raysplit_cells" in message.split("rows left:")[1]
    assert "raysplit_predictions" not in message.split("rows left:")[1]  # those went
    assert "running the delete again finishes it" in message
    # meanwhile it is off the page, and still known to a rerun
    assert holdings(store, GONE)[experiment_archive.name] == 1
    events = EventStore(store)
    assert [e.experiment for e in experiment_list(events.experiment_spans(), None).experiments] == [
        KEPT
    ]
    events.dispose()

    delete_experiment(impatient, GONE, batch_rows=4)
    assert holdings(store, GONE) == {}
    impatient.dispose()
    holder.dispose()


class FakeIngress(BaseHTTPRequestHandler):
    """A real HTTP server standing in for Serve's proxy: one application serving
    ``served`` (its route table and GET /models), and a non-raysplit one (404)."""

    served = KEPT

    def do_GET(self) -> None:
        routes = {"/": "iris", "/other": "other"}
        if self.path == "/-/routes":
            self._send(200, routes)
        elif self.path == "/models":
            self._send(200, {"experiment": self.served, "variants": []})
        else:
            self._send(404, {"detail": "Not Found"})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def ingress() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeIngress)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sqlite_store(tmp_path: Any) -> str:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    fill(url)
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_commands_list_archive_and_delete(
    sqlite_store: str,
    ingress: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a script: nobody to ask
    where = ("--store", sqlite_store, "--url", ingress)
    code, out, err = run(capsys, "experiments", "list", *where)
    lines = out.strip().splitlines()
    assert code == 0, err
    assert lines[0].split() == [
        "EXPERIMENT",
        "FIRST",
        "LAST",
        "PREDICTIONS",
        "LABELLED",
        "ARCHIVED",
        "SERVING",
    ]
    first, second = lines[1].split(), lines[2].split()
    assert {first[0], second[0]} == {KEPT, GONE}
    served = first if first[0] == KEPT else second
    assert served[1] == "2026-03-01T01:00:00Z" and served[3] == "22" and served[-1] == "yes"
    assert lines[-1] == f"2 experiments in {sqlite_store}"

    code, out, _ = run(capsys, "experiments", "archive", GONE, "--store", sqlite_store)
    assert code == 0 and "is archived" in out and f"raysplit report --experiment {GONE}" in out
    code, out, _ = run(capsys, "experiments", "list", *where, "--json")
    view = json.loads(out)
    shown = {e["experiment"]: e for e in view["experiments"]}
    assert view["serving_known"] and shown[KEPT]["serving"] and not shown[GONE]["serving"]
    assert shown[GONE]["archived"] and not shown[KEPT]["archived"]

    # what is served is refused, even with --yes
    code, out, err = run(capsys, "experiments", "delete", KEPT, *where, "--yes")
    assert code == 2 and f"experiment '{KEPT}' is being served now by application iris" in err
    # a script that did not say --yes is refused, not left waiting for an answer
    code, out, err = run(capsys, "experiments", "delete", GONE, *where)
    assert code == 2 and out == ""
    assert "without confirmation" in err and "pass --yes" in err
    assert holdings(sqlite_store, GONE)["raysplit_predictions"] == 2 * 3 * 7 + 1

    code, out, err = run(capsys, "experiments", "delete", GONE, *where, "--yes")
    assert code == 0, err
    assert f"deleted experiment '{GONE}'" in out and "raysplit_predictions 43" in out
    assert holdings(sqlite_store, GONE) == {}


def test_refusals_are_one_line_and_exit_2(
    sqlite_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for argv, message in (
        (
            ["delete", "nope", "--yes"],
            f"holds no experiment 'nope'; it holds: {KEPT}, {GONE}",
        ),
        (
            ["delete", GONE, "--yes"],
            f"cannot tell whether experiment '{GONE}' is being served: the ingress at {dead}"
            " is unreachable",
        ),
    ):
        code, out, err = run(capsys, "experiments", *argv, "--store", sqlite_store, "--url", dead)
        lines = err.strip().splitlines()
        assert code == 2 and out == ""
        assert len(lines) == 1 and lines[0].startswith("raysplit: error: ")
        assert message in lines[0], lines[0]

    code, _, err = run(capsys, "experiments", "archive", "nope", "--store", sqlite_store)
    assert code == 2 and "holds no experiment 'nope'" in err
    code, out, err = run(capsys, "experiments", "list", "--store", sqlite_store, "--url", dead)
    assert code == 0 and "which one is served is unknown: the ingress at" in out
    code, out, err = run(
        capsys, "experiments", "delete", GONE, "--store", sqlite_store, "--url", dead,
        "--yes", "--force",
    )  # fmt: skip
    assert code == 0 and "deleting anyway (--force)" in err
    code, _, err = run(capsys, "experiments", "delete", GONE, "--store", sqlite_store)
    assert code == 2 and f"holds no experiment '{GONE}'; it holds: {KEPT}" in err
