"""Fixtures shared by the fault tests."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.test_event_store_outage import PG_BIN, PrivatePostgres


@pytest.fixture(scope="session")
def stoppable_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server (own data directory and port) for the event store of the
    rollout-fault and upgrade tests: a test may stop it without hurting anybody else's
    database. One for the session, so the upgrade test's first deploy, with the same store
    URL in its runtime_env, reconfigures the replicas the rollout test left instead of
    replacing them (a replacement costs ~15 s here)."""
    assert PG_BIN, "PostgreSQL server binaries not found under /usr/lib/postgresql"
    root = Path(tempfile.mkdtemp(prefix="rs-pg-faults-"))  # the postgres user must reach it
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
