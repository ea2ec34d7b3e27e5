"""Faults during an automatic rollout on the real cluster: the decision maker (the replica
holding the rollout's lease) killed right after a decision, the event store down for many
evaluation intervals with a replica killed meanwhile (its queued events lost). The rollout
must take no decision it cannot base on stored data, never skip or repeat a step, and end
as it does without faults: a k-NN candidate over a constant control is promoted through
every step (tests/integration/test_rollout_http.py, the same models and rule).

The event store is a private PostgreSQL server (tests/faults/conftest.py), so stopping it
hurts nobody else's database.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import requests
import sqlalchemy as sa
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier
from sklearn.neighbors import KNeighborsClassifier

from raysplit.core.registry import move_alias
from tests.conftest import Cluster, cluster_registry
from tests.faults.labelled import Round, post_feedback, predict
from tests.faults.test_event_store_outage import PrivatePostgres
from tests.integration.serving import Deployer
from tests.integration.test_rollout_http import (
    challenger_weight,
    every_replica,
    rollout,
    rollout_config,
)
from tests.models import iris, log_model

pytestmark = pytest.mark.integration

MODEL = "iris-rollout-faults"
STEPS = [20, 35, 50]
MIN_SCORED = 30  # rollout_config's min_scored_per_step
OUTAGE_S = 10  # ten evaluation intervals (1 s), over three lease lifetimes (3 s)


@pytest.fixture(scope="module")
def fault_models(cluster: Cluster, deployer: Deployer) -> MlflowClient:
    """v1: a constant model ('prod', the control); v2: k-NN ('strong', the candidate)."""
    with cluster_registry(cluster) as (client, experiment):
        x, y = iris()
        log_model(DummyClassifier(), x, y, name=MODEL, experiment_id=experiment)
        move_alias(client, MODEL, "prod", "1")  # with raysplit's history, as tune sets it
        log_model(
            KNeighborsClassifier(), x, y, name=MODEL, alias="strong", experiment_id=experiment
        )
    return MlflowClient(
        cluster.locations.mlflow_tracking_uri, cluster.locations.mlflow_registry_uri
    )


class Traffic:
    """Labelled rounds of 150 predictions, every failure counted."""

    def __init__(self, url: str, prefix: str):
        self.url, self.prefix = url, prefix
        self.rounds: list[Round] = []

    def send(self, feedback: bool = True) -> Round:
        sent = predict(self.url, 150, self.prefix)
        self.rounds.append(sent)
        if feedback:
            post_feedback(self.url, sent.labels)
        return sent

    def drive(self, deployer: Deployer, until: Callable[[dict], bool], timeout: float = 240):
        """Send labelled rounds until ``until(GET /rollout)`` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = rollout(deployer)
            if until(view):
                return view
            self.send()
        raise AssertionError(f"the rollout never got there: {rollout(deployer)['rollout']}")

    def failed(self) -> int:
        return sum(r.failed for r in self.rounds)

    def sent(self) -> int:
        return sum(r.statuses.total() for r in self.rounds)


def queued_on(deployer: Deployer, replica: str) -> int:
    """What ``replica`` says it holds unwritten (GET /models, asked until it answers)."""
    session = requests.Session()
    for _ in range(300):
        body = session.get(f"{deployer.url}/models", timeout=10).json()
        if body["replica"] == replica:
            return body["events"]["queued"]
    raise AssertionError(f"replica {replica} never answered /models")


def post_once(url: str, labels: dict[str, str]) -> str:
    """One attempt at posting labels: the status and the start of the answer."""
    items = [{"request_id": rid, "label": label} for rid, label in labels.items()]
    try:
        response = requests.post(f"{url}/feedback", json=items, timeout=30)
    except requests.RequestException as exc:
        return f"no answer ({type(exc).__name__})"
    return f"{response.status_code} {response.text[:100]!r}"


def stored(url: str, request_ids: set[str]) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT request_id FROM raysplit_predictions WHERE NOT shadow")
            ).scalars()
            return len(request_ids & set(rows))
    finally:
        engine.dispose()


def test_a_rollout_survives_its_decision_maker_killed_a_store_outage_and_a_killed_replica(
    deployer: Deployer,
    fault_models: MlflowClient,
    stoppable_postgres: PrivatePostgres,
    ray_address: str,
) -> None:
    began = time.monotonic()
    name = f"rollout-faults-{os.getpid()}"
    config = deployer.config(
        rollout_config(name, f"models:/{MODEL}@prod", f"models:/{MODEL}@strong", STEPS)
    )
    store_env = {"env_vars": {"RAYSPLIT_EVENT_STORE_URL": stoppable_postgres.url}}
    config["applications"][0]["runtime_env"] = store_env
    deployer.apply(config)
    every_replica(deployer, lambda body: challenger_weight(body) == STEPS[0])
    deployed = time.monotonic()
    traffic = Traffic(deployer.url, name)

    # 1. the decision maker killed right after it advanced, before its next evaluation
    view = traffic.drive(deployer, lambda v: v["rollout"]["step"] >= 1)
    maker = [d for d in view["decisions"] if d["kind"] == "advance"][-1]["actor"]
    os.kill(deployer.replica_pids()[maker], signal.SIGKILL)
    maker_killed_at = time.time()
    # no traffic until Serve has replaced it: the rollout cannot end meanwhile (a promotion
    # needs labelled requests in the last step), so the outage below falls within it
    deployer.running_replicas(without={maker})  # Serve replaced the killed decision maker
    view = rollout(deployer)
    assert view["rollout"]["phase"] == "running", view["rollout"]
    after_kill = [d for d in view["decisions"] if d["at"] > maker_killed_at]
    assert after_kill, "nobody took the killed decision maker's lease"
    successor, taken_over_at = after_kill[0]["actor"], after_kill[0]["at"]
    assert successor != maker

    # 2. the store down for many evaluations, with predictions queued in both replicas and
    # one of them (not the lease holder) killed meanwhile: what it held is lost
    victim = next(r for r in deployer.running_replicas() if r != successor)
    stoppable_postgres.stop()
    stopped_at = time.time()
    try:
        during = traffic.send(feedback=False)  # answered; events held in the replicas
        victim_queued = queued_on(deployer, victim)
        os.kill(deployer.replica_pids()[victim], signal.SIGKILL)
        after_victim = traffic.send(feedback=False)
        refused = post_once(deployer.url, during.labels)
        time.sleep(max(0.0, stopped_at + OUTAGE_S - time.time()))
    finally:
        stoppable_postgres.start()
    restarted_at = time.time()
    feedback_statuses = post_feedback(deployer.url, during.labels | after_victim.labels)

    view = traffic.drive(deployer, lambda v: v["rollout"]["phase"] != "running", timeout=300)
    record = view["rollout"]
    assert record["phase"] == "promoted", record
    decisions = view["decisions"]
    moves = [d for d in decisions if d["kind"] != "hold"]
    assert [d["kind"] for d in moves] == ["start", "advance", "advance", "promote"], moves
    assert [d["step"] for d in moves[1:]] == [0, 1, 2]  # no step skipped or repeated
    assert [d["seq"] for d in moves] == [0, 1, 2, 3]
    for move in moves[1:]:  # each on the step's minimum of stored labelled requests
        assert move["figures"]["candidate_labelled"] >= MIN_SCORED, move
    # the killed decision maker decided nothing after its death, and nobody decided while
    # the store was down
    assert all(d["actor"] != maker for d in decisions if d["at"] > maker_killed_at)
    assert not [d for d in decisions if stopped_at <= d["at"] <= restarted_at]
    resumed_at = min(d["at"] for d in decisions if d["at"] > restarted_at)

    deadline = time.monotonic() + 90
    while rollout(deployer)["rollout"]["registry"] != "done":
        assert time.monotonic() < deadline, rollout(deployer)["rollout"]
        time.sleep(0.5)
    assert fault_models.get_model_version_by_alias(MODEL, "prod").version == 2

    for replica in deployer.replica_ids():  # the survivors wrote what they held
        deadline = time.monotonic() + 60
        while queued_on(deployer, replica):
            assert time.monotonic() < deadline, f"{replica} still holds events"
            time.sleep(0.5)
    outage_ids = set(during.labels) | set(after_victim.labels)
    landed = stored(stoppable_postgres.url, outage_ids)
    print(
        f"rollout faults: {traffic.sent()} predictions, {traffic.failed()} failed;"
        f" lease taken over {taken_over_at - maker_killed_at:.1f}s after the kill;"
        f" store down {restarted_at - stopped_at:.1f}s, first decision"
        f" {resumed_at - restarted_at:.1f}s after it was back; feedback answered"
        f" {refused} while it was down, then"
        f" {feedback_statuses}; killed replica held {victim_queued} events;"
        f" {len(outage_ids) - landed} of {len(outage_ids)} predictions answered during the"
        f" outage never stored; decisions {[(d['kind'], d['step']) for d in moves]},"
        f" {len(decisions) - len(moves)} holds; deploy {deployed - began:.0f}s,"
        f" rollout {time.monotonic() - deployed:.0f}s"
    )
    assert len(outage_ids) - landed <= victim_queued
