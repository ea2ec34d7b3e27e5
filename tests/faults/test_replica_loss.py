"""An ingress replica's process is killed (SIGKILL) while clients keep sending predictions.

Serve notices the dead actor and starts a replacement; HAProxy stops sending to the dead
server. The test measures what clients saw: the error rate over the whole run, and how
long until the replacement replica answered requests (capacity back to two replicas).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from tests.faults.load import BackgroundLoad
from tests.integration.serving import Deployer, user_config

pytestmark = pytest.mark.integration

# Serve must list a replacement (in any state) this long after the kill; once it does, the
# wait follows it through STARTING for as long as Serve keeps it, so a loaded CI machine
# that starts it slowly is measured, not failed. The figure is printed and documented.
REPLACEMENT_LISTED_S = 90


def _first_answer_from_a_replacement(
    deployer: Deployer, load: BackgroundLoad, before: set[str], killed_at: float
) -> float:
    """When a replica that was not running before the kill first answered a request."""
    while True:
        fresh = {
            s.sent_at
            for s in list(load.samples)
            if s.status == 200 and s.replica and s.replica not in before
        }
        if fresh:
            return min(fresh)
        replacements = {
            rid: state for rid, state in deployer.replica_states().items() if rid not in before
        }
        waited = time.monotonic() - killed_at
        assert replacements or waited < REPLACEMENT_LISTED_S, (
            f"Serve lists no replacement replica {waited:.0f}s after the kill"
        )
        assert not load.finished(), (
            f"the load ended before a replacement answered; Serve lists {replacements}"
        )
        time.sleep(0.5)


def test_killing_a_replica_under_load_costs_under_one_percent_and_capacity_returns(
    deployer: Deployer, ray_address: str
) -> None:
    name = f"replica-loss-{uuid.uuid4().hex[:6]}"
    deployer.deploy(user_config(experiment=name))
    before = deployer.replica_pids()
    assert len(before) == 2, before
    victim, pid = sorted(before.items())[0]
    with BackgroundLoad(deployer.url, name, connections=8, max_seconds=600) as load:
        load.wait_for(1500)  # steady state on both replicas
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        recovered_at = _first_answer_from_a_replacement(deployer, load, set(before), killed_at)
        load.wait_for(load.answered() + 1500)  # keep going on the recovered pair
    samples = load.samples
    failed = load.failures()
    error_rate = len(failed) / len(samples)
    steady = load.rate(samples[0].sent_at + 1, killed_at)
    degraded = load.rate(killed_at, recovered_at)
    restored = load.rate(recovered_at, samples[-1].sent_at)
    print(
        f"replica loss: {len(samples)} requests, {len(failed)} failed"
        f" ({100 * error_rate:.2f}%: statuses {sorted({s.status for s in failed})}),"
        f" replacement answering {recovered_at - killed_at:.1f}s after the kill;"
        f" req/s before {steady:.0f}, while one replica {degraded:.0f}, after {restored:.0f}"
    )
    assert error_rate < 0.01
    after = deployer.replica_ids()
    assert victim not in after and len(after) == 2, after
