"""A finished rollout's outcome in a real MLflow registry and tracking store (issue 16): the
alias moves on a promotion (and rolls back), both versions say what happened, one run per
rollout holds the evidence, however often the controller retries. No Ray: the embedded
SQLite store under a temporary RAYSPLIT_HOME."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sklearn.neighbors import KNeighborsClassifier

from raysplit.core.registry import HISTORY_TAG, current_holder, rollback_alias
from raysplit.core.settings import Locations
from serve_app.config.rollout import RolloutConfig
from serve_app.rollout.registry import ModelRef, record_outcome
from serve_app.rollout.rule import Decision, DecisionKind, RolloutFigures
from serve_app.rollout.state import (
    DecisionEntry,
    RolloutPhase,
    RolloutRecord,
    after_action,
    after_decision,
    start,
)
from serve_app.stats.models import Metric
from tests.models import iris, log_model, seed_embedded_store
from tune.tracking import connect, ensure_experiment

pytestmark = pytest.mark.integration

EXPERIMENT = "iris-ab"
SOURCE_EXPERIMENT = "raysplit-iris"
T0 = 1_700_000_000.0
ARTIFACTS = {"decisions.json", "report.json", "rollout.json", "rollout.png"}


@dataclass(frozen=True)
class Registry:
    client: MlflowClient
    source_experiment: str  # where the versions' runs were logged
    control: ModelRef  # iris version 1, by its alias champion
    candidate: ModelRef  # iris version 2


@pytest.fixture
def registry(home: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """iris v1 (champion) and v2 (challenger), logged as `raysplit tune` logs them."""
    locations = Locations.resolve()
    seed_embedded_store(locations)
    # connect() exports both URIs to os.environ: set here so they are undone afterwards
    monkeypatch.setenv("MLFLOW_TRACKING_URI", locations.mlflow_tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", locations.mlflow_registry_uri)
    client = connect(locations)
    experiment = ensure_experiment(client, SOURCE_EXPERIMENT, locations)
    x, y = iris()
    log_model(KNeighborsClassifier(), x, y, name="iris", alias="champion", experiment_id=experiment)
    log_model(
        KNeighborsClassifier(n_neighbors=15), x, y, name="iris", alias="challenger",
        experiment_id=experiment,
    )  # fmt: skip
    return Registry(
        client,
        experiment,
        ModelRef(model_uri="models:/iris@champion", name="iris", version="1"),
        ModelRef(model_uri="models:/iris@challenger", name="iris", version="2"),
    )


def figures(non_inferiority: float | None, inferiority: float | None) -> RolloutFigures:
    return RolloutFigures(
        metric=Metric.ACCURACY,
        step_elapsed_s=120.0,
        control_labelled=300,
        candidate_labelled=250,
        control_labelled_total=600,
        candidate_labelled_total=400,
        difference=0.01,
        margin=0.02,
        non_inferiority_p_value=non_inferiority,
        superiority_p_value=0.4,
        inferiority_p_value=inferiority,
        error_rate_increase=0.0,
        error_rate_p_value=None,
        latency_ratio=1.0,
        latency_p_value=None,
        psi=0.01,
        srm_p_value=0.5,
        srm_flagged=False,
    )


def share_asked(record: RolloutRecord, kind: DecisionKind) -> float:
    if kind is DecisionKind.HOLD:
        return record.share
    if kind is DecisionKind.ADVANCE:
        return record.config.steps[record.step + 1]
    if kind is DecisionKind.ROLLBACK or record.config.on_success == "promote":
        return 0.0
    return record.share


def run_rollout(
    kinds: list[DecisionKind], on_success: str = "promote"
) -> tuple[RolloutRecord, list[DecisionEntry]]:
    """A rollout over steps 10% and 50% taking the given decisions, a minute apart, and
    its decision log as the controller writes it."""
    config = RolloutConfig(candidate="challenger", steps=[10, 50], on_success=on_success)
    record = start(EXPERIMENT, config, "champion", "2", now=T0)
    log = []
    for i, kind in enumerate(kinds):
        at = T0 + 60 * (i + 1)
        p_values = (None, None) if i == 0 else (0.5 / (i + 1), 0.9)
        decision = Decision(
            kind=kind,
            reason=f"{kind.value} at {i}",
            step=record.step,
            share=record.share,
            share_after=share_asked(record, kind),
            figures=figures(*p_values),
        )
        before, record = record, after_decision(record, decision, now=at)
        log.append(
            DecisionEntry(
                experiment=EXPERIMENT,
                rollout_id=record.rollout_id,
                at=at,
                seq=record.seq,
                step=before.step,
                kind=kind.value,
                share=before.share,
                share_after=record.share,
                reason=decision.reason,
                actor="replica-1",
                figures=decision.figures.model_dump(mode="json"),
            )
        )
    return record, log


PROMOTION = [DecisionKind.HOLD, DecisionKind.ADVANCE, DecisionKind.PROMOTE]


def runs_of(registry: Registry, record: RolloutRecord, experiment_id: str | None = None) -> list:
    return registry.client.search_runs(
        [experiment_id or registry.source_experiment],
        filter_string=f"tags.`raysplit.rollout.id` = '{record.rollout_id}'",
    )


def version_tags(registry: Registry, version: str) -> dict[str, str]:
    return registry.client.get_model_version("iris", version).tags


def test_promotion_moves_the_alias_tags_both_versions_and_logs_the_evidence(
    registry: Registry, tmp_path: Path
) -> None:
    record, log = run_rollout(PROMOTION)
    assert record.phase is RolloutPhase.PROMOTED
    report = {"experiment": EXPERIMENT, "requests": 1234}

    run_id = record_outcome(
        registry.client, record, log, registry.control, registry.candidate, report
    )

    client = registry.client
    assert current_holder(client, "iris", "champion") == "2"
    candidate = version_tags(registry, "2")
    assert candidate["raysplit.rollout.outcome"] == "promoted"
    assert candidate["raysplit.rollout.reason"] == record.reason
    assert candidate["raysplit.rollout.id"] == record.rollout_id
    assert "rolled_back" not in candidate
    control = version_tags(registry, "1")
    assert control["raysplit.rollout.outcome"] == "replaced"
    assert control["raysplit.rollout.id"] == record.rollout_id

    (run,) = runs_of(registry, record)  # in the candidate's source experiment, by default
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"rollout-{EXPERIMENT}-{record.rollout_id}"
    assert run.data.tags["raysplit.rollout.alias_moved"] == "true"
    assert run.data.params["steps"] == "10,50"
    assert run.data.params["on_success"] == "promote"
    assert run.data.params["candidate"] == "challenger"
    assert run.data.params["control"] == "champion"
    assert run.data.metrics == {"final_share": 0.0, "steps_reached": 2.0, "decisions": 3.0}
    assert {a.path for a in client.list_artifacts(run_id)} == ARTIFACTS
    decisions = json.loads(Path(client.download_artifacts(run_id, "decisions.json")).read_text())
    assert [d["kind"] for d in decisions] == ["hold", "advance", "promote"]
    assert [d["share_after"] for d in decisions] == [10.0, 50.0, 0.0]
    assert decisions[2]["figures"]["non_inferiority_p_value"] == pytest.approx(0.5 / 3)
    assert json.loads(Path(client.download_artifacts(run_id, "report.json")).read_text()) == report
    saved = json.loads(Path(client.download_artifacts(run_id, "rollout.json")).read_text())
    assert RolloutRecord.model_validate(saved) == record
    png = Path(client.download_artifacts(run_id, "rollout.png")).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    # the alias history has the move: `raysplit rollback` returns champion to version 1
    assert rollback_alias(client, "iris", "champion") == ("2", "1")
    assert current_holder(client, "iris", "champion") == "1"


def test_a_retry_writes_nothing_twice(registry: Registry) -> None:
    record, log = run_rollout(PROMOTION)
    args = (registry.client, record, log, registry.control, registry.candidate, None)

    first = record_outcome(*args)
    assert record_outcome(*args) == first

    assert len(runs_of(registry, record)) == 1
    history = registry.client.get_registered_model("iris").tags
    assert history[HISTORY_TAG.format(alias="champion")] == "1,2"
    assert {a.path for a in registry.client.list_artifacts(first)} == ARTIFACTS - {"report.json"}


def test_a_run_left_unfinished_by_a_crash_is_finished_not_duplicated(registry: Registry) -> None:
    record, log = run_rollout(PROMOTION)
    args = (registry.client, record, log, registry.control, registry.candidate, None)
    run_id = record_outcome(*args)
    registry.client.update_run(run_id, status="RUNNING")  # as if killed before the end

    assert record_outcome(*args) == run_id

    (run,) = runs_of(registry, record)
    assert run.info.status == "FINISHED"
    assert len(registry.client.get_metric_history(run_id, "decisions")) == 1
    assert registry.client.get_registered_model("iris").tags[
        HISTORY_TAG.format(alias="champion")
    ] == "1,2"  # fmt: skip


def test_a_rolled_back_candidate_is_tagged_with_the_reason_and_no_alias_moves(
    registry: Registry,
) -> None:
    record, log = run_rollout([DecisionKind.HOLD, DecisionKind.ROLLBACK])
    assert record.phase is RolloutPhase.ROLLED_BACK

    run_id = record_outcome(
        registry.client, record, log, registry.control, registry.candidate, None
    )

    assert current_holder(registry.client, "iris", "champion") == "1"
    candidate = version_tags(registry, "2")
    assert candidate["rolled_back"] == record.reason == "rollback at 1"
    assert candidate["raysplit.rollout.outcome"] == "rolled_back"
    assert version_tags(registry, "1")["raysplit.rollout.outcome"] == "kept"
    run = registry.client.get_run(run_id)
    assert run.data.tags["raysplit.rollout.alias_moved"] == "false"
    assert run.data.metrics["final_share"] == 0.0


def test_an_abort_keeps_the_control(registry: Registry) -> None:
    record, log = run_rollout([DecisionKind.HOLD])
    record = after_action(record, "abort", now=T0 + 300, who="alice")

    record_outcome(registry.client, record, log, registry.control, registry.candidate, None)

    assert current_holder(registry.client, "iris", "champion") == "1"
    candidate = version_tags(registry, "2")
    assert candidate["raysplit.rollout.outcome"] == "aborted"
    assert candidate["raysplit.rollout.reason"] == "aborted by alice"
    assert "rolled_back" not in candidate
    assert version_tags(registry, "1")["raysplit.rollout.outcome"] == "kept"


def test_a_pinned_control_moves_nothing_and_the_run_says_why(
    registry: Registry, home: Path
) -> None:
    record, log = run_rollout(PROMOTION)
    pinned = ModelRef(model_uri="models:/iris/1", name="iris", version="1")

    run_id = record_outcome(
        registry.client, record, log, pinned, registry.candidate, None, "rollouts-elsewhere"
    )

    assert current_holder(registry.client, "iris", "champion") == "1"
    history = registry.client.get_registered_model("iris").tags
    assert history[HISTORY_TAG.format(alias="champion")] == "1"
    assert version_tags(registry, "1")["raysplit.rollout.outcome"] == "replaced"
    run = registry.client.get_run(run_id)
    tags = run.data.tags
    assert tags["raysplit.rollout.alias_moved"] == "false"
    assert "pinned (models:/iris/1)" in tags["raysplit.rollout.alias_reason"]
    experiment = registry.client.get_experiment_by_name("rollouts-elsewhere")
    assert run.info.experiment_id == experiment.experiment_id
    # the embedded store's artifacts stay under RAYSPLIT_HOME, not the working directory
    assert experiment.artifact_location == f"{(home / 'mlartifacts').as_uri()}/rollouts-elsewhere"


def test_an_alias_of_another_registered_model_is_not_moved(registry: Registry) -> None:
    record, log = run_rollout(PROMOTION)
    x, y = iris()
    info = log_model(
        KNeighborsClassifier(n_neighbors=3), x, y, name="iris-b",
        experiment_id=registry.source_experiment,
    )  # fmt: skip
    candidate = ModelRef(
        model_uri="models:/iris-b/1", name="iris-b", version=str(info.registered_model_version)
    )

    run_id = record_outcome(registry.client, record, log, registry.control, candidate, None)

    assert current_holder(registry.client, "iris", "champion") == "1"
    assert registry.client.get_model_version("iris-b", "1").tags[
        "raysplit.rollout.outcome"
    ] == "promoted"  # fmt: skip
    tags = registry.client.get_run(run_id).data.tags
    assert tags["raysplit.rollout.alias_moved"] == "false"
    assert "another registered model" in tags["raysplit.rollout.alias_reason"]


@pytest.mark.parametrize("phase", [RolloutPhase.RUNNING, RolloutPhase.PAUSED])
def test_a_rollout_that_has_not_ended_is_refused(registry: Registry, phase: RolloutPhase) -> None:
    record, log = run_rollout([DecisionKind.HOLD])
    record = record.model_copy(update={"phase": phase})

    with pytest.raises(ValueError, match=f"is {phase.value}, not ended"):
        record_outcome(registry.client, record, log, registry.control, registry.candidate, None)

    assert version_tags(registry, "2").get("raysplit.rollout.outcome") is None
    assert runs_of(registry, record) == []
