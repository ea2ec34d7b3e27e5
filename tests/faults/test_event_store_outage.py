"""Event-store faults: the database stopped under traffic and started again, a graceful
shutdown with events queued, and a SIGKILL that gives the replica no chance to write them.

A private PostgreSQL server (its own data directory and port, run as the postgres user) is
started for the test, so stopping it hurts nobody else's database.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from raysplit.eventstore.store import EventStore
from tests.conftest import free_port
from tests.integration.serving import Deployer, user_config

pytestmark = pytest.mark.integration

PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


class PrivatePostgres:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.data = root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _pg(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", f"{PG_BIN[-1]}/{args[0]}", *args[1:]],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._pg(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", f"{self.root}/log", "-w", "start"
        )

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running_private_postgres(prefix: str) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of its own (data directory, port) that a test may stop, removed
    on exit whether or not the test left it running."""
    assert PG_BIN, "PostgreSQL server binaries not found under /usr/lib/postgresql"
    root = Path(tempfile.mkdtemp(prefix=prefix))  # the postgres user must reach it
    shutil.chown(root, "postgres", "postgres")
    server = PrivatePostgres(root, free_port())
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    with running_private_postgres("rs-pg-") as server:
        yield server


def live_events(url: str, experiment: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(*) FROM raysplit_predictions WHERE experiment = :e AND NOT shadow"
                ),
                {"e": experiment},
            ).scalar()
    finally:
        engine.dispose()


def test_predictions_survive_the_database_stopping_and_every_event_lands_after(
    deployer: Deployer, private_postgres: PrivatePostgres
) -> None:
    """300 predictions from 4 connections; the database is stopped after the first 100 and
    started again after 200. Every prediction answers 200, and all 300 events are in
    PostgreSQL once it is back: delayed, none dropped."""
    name = f"outage-{uuid.uuid4().hex[:6]}"
    env = {"runtime_env": {"env_vars": {"RAYSPLIT_EVENT_STORE_URL": private_postgres.url}}}
    deployer.deploy(user_config(experiment=name), actor_options=env)
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if len(statuses) >= 300:
                    return
                statuses.append(0)
                index = len(statuses) - 1
            reply = deployer.predict(
                {
                    "sepal_length": 5.1,
                    "sepal_width": 3.5,
                    "petal_length": 1.4,
                    "petal_width": 0.2,
                },
                {"X-Request-Id": f"{name}-{index}"},
                session,
            )
            statuses[index] = reply.status
            time.sleep(0.01)

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 120
        while sum(1 for s in statuses if s) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(100)
    private_postgres.stop()
    wait_for(200)
    noticed = [
        requests.get(f"{deployer.url}/models", timeout=10).json()["events"] for _ in range(6)
    ]
    # feedback must be matched to its stored prediction: refused as retryable, not a 500
    refused = requests.post(
        f"{deployer.url}/feedback", json={"request_id": f"{name}-0", "label": "setosa"}, timeout=30
    )
    private_postgres.start()
    for thread in threads:
        thread.join(timeout=120)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "5"
    assert "event store is unreachable" in refused.json()["detail"]
    assert len(statuses) == 300 and set(statuses) == {200}
    assert any(e["queued"] > 0 or e["failed_flushes"] > 0 for e in noticed)
    written = 0
    for _ in range(120):  # retries back off up to 10 s
        written = live_events(private_postgres.url, name)
        if written == 300:
            break
        time.sleep(0.5)
    assert written == 300
    events = [requests.get(f"{deployer.url}/models", timeout=10).json()["events"] for _ in range(6)]
    assert all(e["dropped"] == 0 and e["queued"] == 0 for e in events)


def stored_events(url: str, experiment: str) -> int:
    EventStore(url).dispose()  # creates the tables if no replica has written yet
    return live_events(url, experiment)


def queued_by_replica(deployer: Deployer, replicas: int = 2) -> dict[str, int]:
    """Each replica's queued event count, read from /models until every replica answered."""
    seen: dict[str, int] = {}
    session = requests.Session()
    for _ in range(200):
        body = session.get(f"{deployer.url}/models", timeout=10).json()
        seen[body["replica"]] = body["events"]["queued"]
        if len(seen) == replicas:
            return seen
    raise AssertionError(f"only replicas {sorted(seen)} answered /models")


# the environment of the replicas the graceful-shutdown test starts: the SIGKILL test holds
# its events in them too, rather than replacing them with default ones first
NEXT_GENERATION = {"runtime_env": {"env_vars": {"RAYSPLIT_TEST_GENERATION": "next"}}}


def held_in_memory(
    deployer: Deployer, name: str, count: int, actor_options: dict | None = None
) -> dict[str, int]:
    """Deploy with an hour between flushes and send ``count`` predictions: all stay queued.

    The long interval goes to replicas already running the default one (with these
    ``actor_options``): the change wakes their writer, which writes the new config's
    allocation record at once. (A fresh replica's first allocation record may stay queued
    too, and be counted with these.)"""
    deployer.ensure(user_config(), actor_options=actor_options)
    deployer.deploy(
        user_config(experiment=name, event_flush_interval_s=3600), actor_options=actor_options
    )
    replies = deployer.load(count, lambda i: {"X-Request-Id": f"{name}-{i}"}, threads=4)
    assert {r.status for r in replies} == {200}
    queued = queued_by_replica(deployer)
    assert sum(queued.values()) == count, queued
    return queued


def test_a_graceful_shutdown_writes_every_queued_event(deployer: Deployer) -> None:
    """Replicas replaced by a deploy (Serve's graceful stop) flush their queue first."""
    name = f"graceful-{uuid.uuid4().hex[:6]}"
    url = deployer.cluster.locations.event_store_url
    held_in_memory(deployer, name, 120)
    assert stored_events(url, name) == 0  # nothing written yet: the queue holds them
    before = deployer.replica_ids()
    deployer.deploy(user_config(experiment=name), actor_options=NEXT_GENERATION)  # new ones
    assert not before & deployer.replica_ids()
    assert stored_events(url, name) == 120


def test_a_sigkill_loses_exactly_the_queued_events_it_reported(
    deployer: Deployer, ray_address: str
) -> None:
    """SIGKILL gives a replica no chance to flush: what it loses is what /models (and the
    raysplit_events_queued gauge) said it held, and nothing more."""
    name = f"sigkill-{uuid.uuid4().hex[:6]}"
    url = deployer.cluster.locations.event_store_url
    queued = held_in_memory(deployer, name, 120, actor_options=NEXT_GENERATION)
    pids = deployer.replica_pids()
    assert set(pids) == set(queued)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    deployer.running_replicas(without=set(pids))  # Serve restarted both
    lost = 120 - stored_events(url, name)
    print(f"SIGKILL: reported queued {queued}, lost {lost}")
    assert lost == sum(queued.values())
