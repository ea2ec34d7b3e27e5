"""`raysplit rollout status` as a person reads it, from GET /rollout's JSON."""

from __future__ import annotations

from typing import Any

from raysplit.cli.rollout_text import render


def view(serving_seq: int | None, seq: int = 3) -> dict[str, Any]:
    """Just after a rollback: the stored record is at ``seq``; the replica that answered
    serves ``serving_seq``."""
    return {
        "experiment": "iris-ab",
        "configured": {"candidate": "challenger", "steps": [10.0, 50.0]},
        "rollout": {
            "rollout_id": "r1",
            "control": "champion",
            "experiment": "iris-ab",
            "phase": "rolled_back",
            "step": 0,
            "share": 0.0,
            "seq": seq,
            "reason": "latency guardrail breached",
            "config": {"candidate": "challenger", "steps": [10.0, 50.0]},
        },
        "configured_weights": {"champion": 100.0, "challenger": 0.0},
        "effective_weights": {"champion": 90.0, "challenger": 10.0},
        "why": "rollout r1 (running, step 1 of 2): the controller owns the weights",
        "serving_seq": serving_seq,
        "decisions": [],
    }


def test_a_replica_one_decision_behind_says_so() -> None:
    text = render(view(serving_seq=2))
    assert "rolled_back" in text.splitlines()[0]
    assert "this replica serves change 2 of the record, not yet the latest (3)" in text


def test_a_replica_that_caught_up_says_nothing_about_lag() -> None:
    assert "not yet the latest" not in render(view(serving_seq=3))
    assert "not yet the latest" not in render(view(serving_seq=None))
