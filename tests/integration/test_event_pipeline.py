"""The event pipeline over HTTP with PostgreSQL behind it: request ids the database could
not hold are refused where they enter, and the events behind them keep flowing, into the
database and (``lake_append_s``) into the Parquet lake."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from raysplit.eventstore.lake.files import read_table
from tests.integration.serving import RECORD, Deployer, user_config

pytestmark = pytest.mark.integration


def stored_ids(url: str, prefix: str) -> set[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT request_id FROM raysplit_predictions WHERE request_id LIKE :p"),
            {"p": f"{prefix}%"},
        )
        ids = set(found.scalars())
    engine.dispose()
    return ids


def lake_ids(lake: Path, prefix: str) -> set[str]:
    if not (lake / "predictions").exists():
        return set()
    found = read_table(str(lake), "predictions", columns=["request_id"])["request_id"]
    return {rid for rid in found.to_pylist() if rid.startswith(prefix)}


def test_request_ids_postgresql_cannot_hold_are_refused_and_later_events_are_written(
    deployer: Deployer, events_postgres: str, tmp_path: Path
) -> None:
    """On the first version a 200-character X-Request-Id was answered 200, then its event
    failed every write of its batch, forever, and every later event queued behind it."""
    lake = tmp_path / "lake"
    variables = {"RAYSPLIT_EVENT_STORE_URL": events_postgres, "RAYSPLIT_LAKE_URI": str(lake)}
    env = {"runtime_env": {"env_vars": variables}}
    deployer.deploy(user_config(durable_events=True, lake_append_s=1), actor_options=env)
    long_id = deployer.predict(RECORD, {"X-Request-Id": "x" * 200})
    assert long_id.status == 400
    assert long_id.body["detail"] == ("request id is 200 characters long; the limit is 128")
    infer = requests.post(
        f"{deployer.url}/v2/models/iris-ab/infer",
        json={
            "id": "nul\x00byte",
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "data": [list(RECORD.values())],
                }
            ],
        },
        timeout=10,
    )
    assert infer.status_code == 400
    assert "non-printable character" in infer.json()["error"]
    feedback = requests.post(
        f"{deployer.url}/feedback",
        json={"request_id": "y" * 129, "label": "setosa"},
        timeout=10,
    )
    assert feedback.status_code == 422
    assert "129 characters long" in feedback.json()["detail"]

    prefix = f"after-{uuid.uuid4().hex[:6]}-"
    replies = deployer.load(40, headers=lambda i: {"X-Request-Id": f"{prefix}{i}"})
    assert {r.status for r in replies} == {200}
    assert {r.body["request_id"] for r in replies} == {f"{prefix}{i}" for i in range(40)}
    assert stored_ids(events_postgres, prefix) == {f"{prefix}{i}" for i in range(40)}
    # each replica appends what it stored to the lake within lake_append_s (and a poll)
    seen, quiet_since = set(), time.monotonic()
    while (found := lake_ids(lake, prefix)) != {f"{prefix}{i}" for i in range(40)}:
        if found != seen:
            seen, quiet_since = found, time.monotonic()
        assert time.monotonic() - quiet_since < 60, f"the lake holds {len(found)} of 40"
        time.sleep(0.5)
    for _ in range(4):  # each replica's writer: nothing refused, nothing left behind
        events = requests.get(f"{deployer.url}/models", timeout=10).json()["events"]
        assert events["refused"] == 0 and events["refused_recent"] == []
        assert events["last_error"] is None
