"""Fixtures shared by the fault tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.test_event_store_outage import PrivatePostgres, running_private_postgres


@pytest.fixture(scope="session")
def stoppable_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL server (own data directory and port) for the event store of the
    rollout-fault and upgrade tests: a test may stop it without hurting anybody else's
    database. One for the session, so the upgrade test's first deploy, with the same store
    URL in its runtime_env, reconfigures the replicas the rollout test left instead of
    replacing them (a replacement costs ~15 s here)."""
    with running_private_postgres("rs-pg-faults-") as server:
        yield server
