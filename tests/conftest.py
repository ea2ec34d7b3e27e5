"""Shared fixtures: an isolated data directory per test, one real Ray cluster per session,
and a real MLflow server on PostgreSQL for the tests that need a tracking server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import sqlalchemy as sa

from raysplit.cli.cluster import ClusterInfo, down, up
from raysplit.core.settings import Locations

if TYPE_CHECKING:  # serving.py imports this module
    from tests.integration.serving import Deployer

# Ray reads RAY_AUTH_MODE once, at import: a driver joining a token cluster needs it first.
os.environ["RAY_AUTH_MODE"] = "token"

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POSTGRES_ADMIN_URL = os.environ.get(
    "RAYSPLIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"
)


# A replica behind the HAProxy fast path stays up at least this long when Serve stops it,
# so that an external load balancer can deregister it first; Serve's default is 30 s, and
# every deploy that replaces replicas waited it out (a two-replica rolling replacement took
# ~38 s, ~13 s with 5 s). Serve's own HAProxy retries refused connections; the tests that
# deploy under load (bad deploys, replica and node loss) pass as they did with 30 s.
SERVE_TEST_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


# Fixtures that stand for a Ray cluster (the session's, or one a test starts for itself)
CLUSTER_FIXTURES = frozenset({"cluster", "ray_address", "deployer", "ft_cluster"})
# Where no test needs a Ray cluster: under `make test` (`pytest -n auto`) each of these
# modules runs on whichever worker is free, beside the two halves of the cluster tests
# (work_unit below). Checked at collection: a test here that asks for a cluster fails.
NO_CLUSTER = (
    "tests/unit/",
    "tests/integration/test_check_cli.py",
    "tests/integration/test_event_lake.py",
    "tests/integration/test_event_store.py",
    "tests/integration/test_event_training_data.py",
    "tests/integration/test_experiment_removal.py",
    "tests/integration/test_experiment_queries.py",
    "tests/integration/test_label_correction.py",
    "tests/integration/test_model_safety.py",
    "tests/integration/test_lake_jobs.py",
    "tests/integration/test_onnx_serving.py",
    "tests/integration/test_rollout_controller.py",
    "tests/integration/test_rollout_registry.py",
)


# The tests that use a Ray cluster are two work units, one per worker under `make test`,
# each on its worker's own session cluster: with one unit, one worker ran 1,336 s of them
# while the other finished its 204 s of Ray-free modules and sat idle. Most of a cluster
# test's time is waiting (deploys, drains, polls), so two clusters share the 2 cores well.
# These modules make the second unit (about half the time); every other one the first.
# Modules that share a session fixture stay in one unit, or the fixture is built twice:
# stoppable_postgres (rollout faults, upgrade under load).
SECOND_CLUSTER = (
    "tests/faults/test_event_store_outage.py",
    "tests/faults/test_head_recovery.py",
    "tests/faults/test_node_loss.py",
    "tests/faults/test_replica_loss.py",
    "tests/faults/test_rollout_faults.py",
    "tests/faults/test_upgrade_under_load.py",
    "tests/integration/test_cross_site.py",
    "tests/integration/test_event_pipeline.py",
    "tests/integration/test_retrain.py",
    "tests/integration/test_rollout_http.py",
    "tests/integration/test_search.py",
)


def work_unit(nodeid: str) -> str:
    """The unit pytest-xdist hands one worker whole: a Ray-free module, or one of the two
    halves of the tests that may use a Ray cluster. A worker starts its session cluster
    once, for the half it runs; a module never runs on two clusters."""
    module = nodeid.split("::", 1)[0]
    if module.startswith(NO_CLUSTER):
        return module
    return "ray-cluster-2" if module in SECOND_CLUSTER else "ray-cluster-1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = [
        item.nodeid
        for item in items
        if not work_unit(item.nodeid).startswith("ray-cluster")
        and CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError(
            f"{wrong[0]} uses a Ray cluster but its module is in NO_CLUSTER"
            " (tests/conftest.py): take the module out of that list"
        )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler, with :func:`work_unit` as its scope, handing out the two
    cluster halves first: they are the long units, and the Ray-free modules fill in behind
    whichever half ends first. (``--dist loadgroup`` would do the scoping from markers, but
    with pytest 9.2 it ignores them: it renames ``item._nodeid``, which pytest no longer
    reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ClusterScopeScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            for scope in [s for s in self.workqueue if s.startswith("ray-cluster")]:
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return ClusterScopeScheduling(config, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh RAYSPLIT_HOME with the embedded MLflow store."""
    path = tmp_path / "home"
    monkeypatch.setenv("RAYSPLIT_HOME", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return path


@pytest.fixture(params=["embedded", "server"])
def tracking(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test against the embedded SQLite store and against an MLflow server."""
    if request.param == "server":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("mlflow_server"))
    return request.param


@dataclass(frozen=True)
class Cluster:
    """The session's Ray cluster, started by `raysplit up` as a user would."""

    locations: Locations
    info: ClusterInfo
    env: dict[str, str]  # what a shell needs for Ray's CLI against this cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One token-authenticated Ray head with the HAProxy fast path for the whole session.

    Ray's ports are free-picked, and Serve's come from `raysplit up`'s block for this data
    directory, so the suite can run beside a developer's own cluster.
    """
    home = tmp_path_factory.mktemp("cluster-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYSPLIT_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        # mlflow.set_registry_uri() writes it to os.environ: undone on exit
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.setenv("RAYSPLIT_RAY_TEMP_DIR", f"/tmp/rst-{os.getpid()}")
        # the fast path buffers request-path log lines 1000 at a time; tests read them at once
        patch.setenv("RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE", "1")
        # a replica that cannot start is retried once, not three times, before Serve calls
        # the deploy failed: the bad-deploy tests assert what happens then, sooner
        patch.setenv("RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT", "1")
        for name, value in SERVE_TEST_ENV.items():
            patch.setenv(name, value)
        locations = Locations.resolve()
        # not from the checkout, as a node runs an installed package: Ray puts the directory
        # the cluster was started from first on every worker's sys.path, where the
        # checkout's serve_app would shadow the package a deploy ships in its runtime_env
        # (tests/faults/test_upgrade_under_load.py)
        patch.chdir(home)
        info = up(
            locations,
            ray_port=free_port(),
            dashboard_port=free_port(),
            metrics_port=free_port(),
            # two workers start their clusters at the same moment: both would see
            # Ray's default agent port free, and the second's job API would not answer
            dashboard_agent_port=free_port(),
            num_cpus=2,
        )
        env = {"RAYSPLIT_HOME": str(home), "RAY_ADDRESS": info.address, "RAY_AUTH_MODE": "token"}
    try:
        yield Cluster(locations, info, env)
    finally:
        # Ray's gcs_server and autoscaler monitor ignore SIGTERM, so `down` waits out its
        # whole timeout before killing them: the session's cluster is thrown away anyway
        down(locations, timeout=5)
        shutil.rmtree(info.temp_dir, ignore_errors=True)  # Ray's session logs of this run


@pytest.fixture(scope="session")
def ray_address(cluster: Cluster) -> Iterator[str]:
    """This test process joins the session's cluster as a driver (searches run there)."""
    import ray

    ray.init(address=cluster.info.address, log_to_driver=False)
    yield cluster.info.address
    ray.shutdown()


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


def _fresh_postgres(purpose: str) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""

    name = f"raysplit_{purpose}_{os.getpid()}"
    admin = sa.create_engine(f"{POSTGRES_ADMIN_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_ADMIN_URL}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The MLflow server's database."""
    yield from _fresh_postgres("mlflow")


@pytest.fixture(scope="session")
def events_postgres() -> Iterator[str]:
    """An event-store database of its own."""
    yield from _fresh_postgres("events")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty event store on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    url = request.getfixturevalue("events_postgres")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # each test starts empty: tables, partitions, sequences
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@contextmanager
def running_mlflow_server(
    backend_store_uri: str, workdir: Path, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` with proxied artifact storage under ``workdir``: its URL and
    process (a test may stop it early to make it unreachable: :func:`kill_server`; a
    ``port`` of an earlier one starts it again where its clients look)."""
    port = port or free_port()
    log = open(workdir / "mlflow-server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--serve-artifacts",  # clients upload through the server, as on a cluster
            "--artifacts-destination",
            str(workdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # no background job runners: four extra processes this suite never uses
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/health", process)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        log.close()


def kill_server(process: subprocess.Popen) -> None:
    """Kill a server started in a session of its own, workers included: `mlflow server`
    answers from worker processes that outlive a killed parent."""
    if process.poll() is None:
        os.killpg(process.pid, 9)
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server(
    postgres_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The suite's shared `mlflow server`, on PostgreSQL."""
    with running_mlflow_server(postgres_database, tmp_path_factory.mktemp("mlflow")) as (url, _):
        yield url


@contextmanager
def cluster_registry(cluster: Cluster) -> Iterator[tuple[Any, str]]:
    """The session cluster's MLflow (client, the iris experiment's id), for registering
    fixture models; the environment connect() exports is undone on exit."""
    from tune.tracking import connect, ensure_experiment

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYSPLIT_HOME", str(cluster.locations.home))
        patch.setenv("MLFLOW_TRACKING_URI", cluster.locations.mlflow_tracking_uri)
        patch.setenv("MLFLOW_REGISTRY_URI", cluster.locations.mlflow_registry_uri)
        client = connect(cluster.locations)
        yield client, ensure_experiment(client, "raysplit-iris", cluster.locations)


@pytest.fixture(scope="session")
def deployer(
    cluster: Cluster, ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployer]:
    """Three iris versions in the cluster's registry, logged as `raysplit tune` logs its
    best model (v1 champion, v2 challenger, v3 for shadowing; searches themselves are
    tested in test_search.py), then the app deployed with the user's `serve deploy`."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from tests.integration.serving import Deployer, user_config
    from tests.models import iris, log_model

    with cluster_registry(cluster) as (_, experiment):
        x, y = iris()
        for model, alias in (
            (KNeighborsClassifier(n_neighbors=7), "champion"),
            (LogisticRegression(max_iter=500), "challenger"),
            (HistGradientBoostingClassifier(max_iter=30), "candidate"),
        ):
            log_model(model, x, y, name="iris", alias=alias, experiment_id=experiment)
    deployer = Deployer(cluster, tmp_path_factory.mktemp("deploys"))
    deployer.deploy(user_config(), cli=True)  # the README's way, once per session
    yield deployer
