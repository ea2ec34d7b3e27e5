"""A new raysplit release deployed under load: new code, so Serve replaces the replicas
(a reconfigure would not run it), with no request failing, the experiment's events going on
under the same experiment and allocation, and the release's schema migration run once,
although both new replicas start together and each opens the store.

The release is this checkout's ``serve_app`` and ``raysplit`` copied and changed as a
release that needs a schema migration would be: the event store's schema version goes up
by one, and that step records each time it runs in a table of its own, so the test can
count the runs. It goes
to the cluster as the application's ``runtime_env.py_modules`` (a ``local://`` directory,
as code baked into a node's image; a remote package URI does the same on a real cluster),
which Serve treats as a code change: a rolling replacement of every replica, here with
``max_surge_percent: 100`` so that both new replicas start (and migrate) together while
the old ones keep serving until the new ones are up.
"""

from __future__ import annotations

import copy
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from raysplit.eventstore.schema import SCHEMA_VERSION
from raysplit.eventstore.store import EventStore
from tests.conftest import REPO
from tests.faults.load import BackgroundLoad
from tests.faults.test_event_store_outage import PrivatePostgres
from tests.integration.serving import Deployer, user_config

pytestmark = pytest.mark.integration

RELEASE = "0.1.1"
RUNS_TABLE = "raysplit_release_runs"
NEXT_SCHEMA = SCHEMA_VERSION + 1


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} no longer has {old!r}: update the release"
    path.write_text(text.replace(old, new))


def build_release(root: Path) -> Path:
    """This checkout's serving code as release ``RELEASE``: the next schema version, whose
    migration logs its runs."""
    for package in ("serve_app", "raysplit"):
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    store = root / "raysplit" / "eventstore"
    edit(
        store / "schema.py",
        f"SCHEMA_VERSION = {SCHEMA_VERSION}\n",
        f"SCHEMA_VERSION = {NEXT_SCHEMA}\n",
    )
    with (store / "migrations.py").open("a") as migrations:
        migrations.write(
            f"\n\nMIGRATIONS[{NEXT_SCHEMA}] = [\n"
            f'    "CREATE TABLE {RUNS_TABLE} (release VARCHAR(16) NOT NULL,"\n'
            f'    " at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",\n'
            f"    \"INSERT INTO {RUNS_TABLE} (release) VALUES ('{RELEASE}')\",\n"
            f"]\n"
        )
    return root


def query(url: str, statement: str, **params: object) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(statement), params)]
    finally:
        engine.dispose()


def gone_except(deployer: Deployer, replicas: set[str]) -> None:
    """Until no other replica's actor is alive (a stopping replica drains first)."""
    deadline = time.monotonic() + 120
    while set(deployer.replica_pids()) != replicas:
        assert time.monotonic() < deadline, f"still alive: {deployer.replica_pids()}"
        time.sleep(0.5)


def event_stats(deployer: Deployer) -> dict[str, dict]:
    """What each running replica says of its event writer (GET /models)."""
    seen: dict[str, dict] = {}
    session = requests.Session()
    for _ in range(100):
        body = session.get(f"{deployer.url}/models", timeout=10).json()
        seen[body["replica"]] = body["events"]
        if len(seen) == 2:
            break
    return seen


def replicas_ever(address: str) -> set[str]:
    """Every ingress replica this cluster has run, alive or dead."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=address,
        filters=[("class_name", "=", "ServeReplica:iris:Ingress")],
        limit=10_000,
        detail=True,
    )
    return {a.name.rsplit("#", 1)[-1] for a in actors}


def start_times(deployer: Deployer) -> list[float]:
    """When Serve started each running replica's actor (its REST API's ``start_time_s``)."""
    replicas = deployer._status()["deployments"]["Ingress"]["replicas"]
    return sorted(r["start_time_s"] for r in replicas if r["state"] == "RUNNING")


def test_an_upgrade_under_load_fails_no_request_keeps_the_experiment_and_migrates_once(
    deployer: Deployer, stoppable_postgres: PrivatePostgres, ray_address: str, tmp_path: Path
) -> None:
    name = f"upgrade-{uuid.uuid4().hex[:6]}"
    url = stoppable_postgres.url
    EventStore(url).dispose()  # the store at this checkout's schema (if no test made it yet)
    assert query(url, "SELECT version FROM raysplit_schema") == [(SCHEMA_VERSION,)]
    config = deployer.config(
        user_config(experiment=name), deployment_options={"max_surge_percent": 100}
    )
    config["applications"][0]["runtime_env"] = {"env_vars": {"RAYSPLIT_EVENT_STORE_URL": url}}
    deployer.apply(config)
    old = deployer.replica_ids()
    # replicas an earlier deploy replaced may still drain, answering what soft-stopped
    # HAProxy workers send them, into the store they were started with: not this one
    gone_except(deployer, old)
    upgrade = copy.deepcopy(config)
    release = build_release(tmp_path / f"raysplit-{RELEASE}")
    upgrade["applications"][0]["runtime_env"]["py_modules"] = [f"local://{release}"]

    with BackgroundLoad(deployer.url, name, connections=4, pause_s=0.05, max_seconds=400) as load:
        load.wait_for(300)
        began = time.monotonic()
        deployer.apply(upgrade)
        done = time.monotonic()
        new = deployer.replica_ids()
        gone_except(deployer, new)  # the old replicas drained and stopped under the load
        stopped = time.monotonic()
        load.wait_for(load.answered() + 300)
    samples = load.samples
    failed = load.failures()
    assert not old & new and len(new) == 2, (old, new)
    assert {s.replica for s in samples if s.replica in new} == new  # both new ones serve
    assert not failed, f"{len(failed)} failed: statuses {sorted({s.status for s in failed})}"

    # On a host shared with other Ray clusters, a port this cluster's HAProxy still routes
    # to (a stale slot of a stopped replica) can be taken by another cluster's replica,
    # which then answers: those answers, and their events, are not this cluster's.
    ours = replicas_ever(ray_address)
    foreign = [s for s in samples if s.replica not in ours]
    acknowledged = {s.request_id for s in samples if s.status == 200 and s.replica in ours}
    rows: list[tuple] = []
    deadline = time.monotonic() + 60
    while len(rows) < len(acknowledged) and time.monotonic() < deadline:
        rows = query(
            url,
            "SELECT request_id, experiment, allocation FROM raysplit_predictions"
            " WHERE request_id LIKE :prefix AND NOT shadow",
            prefix=f"{name}-%",
        )
        time.sleep(0.5)
    missing = acknowledged - {r[0] for r in rows}
    by = {s.replica for s in samples if s.request_id in missing}
    assert not missing, (  # every answer's event, none lost
        f"{len(missing)} of {len(acknowledged)} events missing, answered by {by}; replicas"
        f" now: {event_stats(deployer)}"
    )
    assert {r[1] for r in rows} == {name}  # the same experiment before and after
    assert len({r[2] for r in rows}) == 1  # and the same allocation (one epoch)

    assert query(url, "SELECT version FROM raysplit_schema") == [(NEXT_SCHEMA,)]
    runs = query(url, f"SELECT release, at FROM {RUNS_TABLE}")
    assert [r[0] for r in runs] == [RELEASE], runs  # once, for two replicas starting together
    started = start_times(deployer)
    print(
        f"upgrade under load: {len(samples)} requests, {len(failed)} failed;"
        f" the deploy took {done - began:.1f}s, the old replicas were gone"
        f" {stopped - began:.1f}s after it began (Serve started the new replicas"
        f" {started[-1] - started[0]:.1f}s apart); {len(rows)} of {len(acknowledged)}"
        f" events stored under {name}; migration runs {len(runs)}; {len(foreign)} answered"
        f" by another cluster's replicas"
    )
