"""A rollout's state machine and the weights it gives every replica: pure, in milliseconds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config.ingress import IngressConfig
from serve_app.predict.routing import Router
from serve_app.rollout.rule import Decision, DecisionKind, RolloutFigures
from serve_app.rollout.state import (
    RolloutConflict,
    RolloutPhase,
    after_action,
    after_decision,
    applies,
    effective_config,
    effective_weights,
    rollout_id,
    start,
    weights_differ,
)


def config(rollout: dict[str, Any] | None = None, **overrides: Any) -> IngressConfig:
    body = {
        "experiment": "e",
        "variants": [
            {"name": "champion", "model_uri": "models:/iris@champion", "weight": 60},
            {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": 10},
            {"name": "other", "model_uri": "models:/iris/7", "weight": 30},
            {"name": "shadow", "model_uri": "models:/iris/3", "shadow": True},
        ],
        "rollout": {"candidate": "challenger", "steps": [5, 25, 50], **(rollout or {})},
        **overrides,
    }
    return IngressConfig.model_validate(body)


CONFIG = config()


def decision(kind: DecisionKind, share_after: float = 0.0) -> Decision:
    figures = RolloutFigures.model_validate(
        {name: None for name in RolloutFigures.model_fields}
        | {"metric": "accuracy", "step_elapsed_s": 1.0}
        | {f: 0 for f in RolloutFigures.model_fields if f.endswith("_labelled")}
        | {"control_labelled_total": 0, "candidate_labelled_total": 0}
    )
    return Decision(
        kind=kind, reason=kind.value, step=0, share=5, share_after=share_after, figures=figures
    )


def fresh() -> Any:
    return start("e", CONFIG.rollout, "champion", "2", now=100.0, control_version="1")


def test_the_candidate_gets_its_share_and_the_others_split_the_rest_as_configured() -> None:
    record = fresh()
    assert effective_weights(CONFIG, record) == pytest.approx(
        {"champion": 95 * 60 / 90, "other": 95 * 30 / 90, "challenger": 5.0}
    )
    served = effective_config(CONFIG, record)
    shares = Router(served).expected_shares()
    assert shares["challenger"] == pytest.approx(0.05)
    assert shares["champion"] == pytest.approx(0.95 * 2 / 3)
    assert [v.shadow for v in served.variants] == [False, False, False, True]  # untouched
    assert served.rollout == CONFIG.rollout


def test_with_no_other_weight_the_control_takes_the_rest() -> None:
    only = config(
        variants=[
            {"name": "champion", "model_uri": "models:/iris@champion", "weight": 0},
            {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": 100},
        ]
    )
    record = start("e", only.rollout, "champion", "2", now=1.0)
    assert effective_weights(only, record) == {"champion": 95.0, "challenger": 5.0}


def test_a_decision_moves_the_record_and_bumps_seq() -> None:
    record = fresh()
    assert after_decision(record, decision(DecisionKind.HOLD), 150.0) is record
    advanced = after_decision(record, decision(DecisionKind.ADVANCE), 160.0)
    assert (advanced.step, advanced.share, advanced.step_started_at, advanced.seq) == (
        1,
        25,
        160.0,
        1,
    )
    back = after_decision(advanced, decision(DecisionKind.ROLLBACK), 170.0)
    assert (back.phase, back.share, back.registry, back.seq) == (
        RolloutPhase.ROLLED_BACK,
        0.0,
        "pending",
        2,
    )
    assert back.terminal


@pytest.mark.parametrize(("on_success", "share"), [("promote", 0.0), ("hold", 50.0)])
def test_promotion_hands_the_traffic_to_the_control_or_keeps_the_last_split(
    on_success: str, share: float
) -> None:
    cfg = config({"on_success": on_success})
    record = start("e", cfg.rollout, "champion", "2", now=1.0)
    record = record.model_copy(update={"step": 2, "share": 50.0})
    promoted = after_decision(record, decision(DecisionKind.PROMOTE), 2.0)
    assert (promoted.phase, promoted.share, promoted.registry) == (
        RolloutPhase.PROMOTED,
        share,
        "pending",
    )


def test_operators_commands_and_the_ones_refused() -> None:
    record = fresh()
    paused = after_action(record, "pause", 120.0, "operator")
    assert paused.phase is RolloutPhase.PAUSED and paused.reason == "paused by operator"
    with pytest.raises(RolloutConflict, match="already paused"):
        after_action(paused, "pause", 121.0, "operator")
    with pytest.raises(RolloutConflict, match="not paused"):
        after_action(record, "resume", 121.0, "operator")
    resumed = after_action(paused, "resume", 130.0, "operator")
    assert resumed.phase is RolloutPhase.RUNNING
    assert resumed.step_started_at == record.step_started_at  # the step's labels still count
    aborted = after_action(resumed, "abort", 140.0, "operator")
    assert (aborted.phase, aborted.share, aborted.registry) == (RolloutPhase.ABORTED, 0.0, "none")
    with pytest.raises(RolloutConflict, match="already ended \\(aborted\\)") as refused:
        after_action(aborted, "resume", 150.0, "operator")
    assert refused.value.status == 409
    promoted = after_action(resumed, "promote", 140.0, "operator")
    assert promoted.phase is RolloutPhase.PROMOTED and promoted.registry == "pending"
    assert [r.seq for r in (record, paused, resumed, aborted)] == [0, 1, 2, 3]


def test_the_same_block_is_the_same_rollout_and_a_change_is_a_new_one() -> None:
    same = rollout_id("e", CONFIG.rollout, "2")
    assert rollout_id("e", config().rollout, "2") == same
    assert rollout_id("e", config({"steps": [5, 50]}).rollout, "2") != same
    assert rollout_id("e", CONFIG.rollout, "3") != same  # a new candidate version
    assert rollout_id("f", CONFIG.rollout, "2") != same


def test_a_record_steers_only_the_config_it_was_started_for() -> None:
    record = fresh()
    assert applies(CONFIG, record)
    changed = config({"steps": [10, 50]})
    assert not applies(changed, record)
    assert effective_config(changed, record) == changed
    assert not applies(CONFIG.model_copy(update={"rollout": None}), record)
    assert weights_differ(changed, record) is None
    assert "the controller owns the weights" in weights_differ(CONFIG, record)


def test_each_rollout_share_is_an_epoch_of_its_own() -> None:
    record = fresh()
    again = start("e", CONFIG.rollout, "champion", "2", now=200.0)
    assert record.rollout_id == again.rollout_id
    assert record.allocation_tag != again.allocation_tag  # a rerun never merges epochs
    key = Router(effective_config(CONFIG, record)).allocation_key
    assert key(record.allocation_tag) != key(again.allocation_tag) != key("")


@pytest.mark.parametrize(
    ("rollout", "message"),
    [
        ({"candidate": "nobody"}, "rollout candidate 'nobody' is not a live variant"),
        ({"candidate": "shadow"}, "rollout candidate 'shadow' is not a live variant"),
        ({"candidate": "champion"}, "rollout candidate 'champion' is the control"),
        ({"steps": [50, 25]}, "strictly increasing"),
        ({"evaluation_interval_s": 0}, "greater than 0"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_rollout_block_is_refused_naming_the_mistake(
    rollout: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        config(rollout)


def test_the_shipped_rollout_config_is_serve_config_yaml_with_a_rollout() -> None:
    """`make demo` deploys it; it must not drift from the A/B file users edit."""
    import yaml

    from tests.conftest import REPO

    def ingress(name: str) -> dict:
        config = yaml.safe_load((REPO / name).read_text())
        return config["applications"][0]["deployments"][0]

    name = "serve_config_rollout.yaml"
    plain, rollout = ingress("serve_config.yaml"), ingress(name)
    parsed = IngressConfig.model_validate(rollout["user_config"])
    assert parsed.rollout is not None and parsed.rollout.candidate == "challenger"
    assert {v.name: v.weight for v in parsed.variants} == {"champion": 100, "challenger": 0}
    strip = ("rollout", "variants")
    assert {k: v for k, v in rollout["user_config"].items() if k not in strip} == {
        k: v for k, v in plain["user_config"].items() if k not in strip
    }
    assert {k: v for k, v in rollout.items() if k != "user_config"} == {
        k: v for k, v in plain.items() if k != "user_config"
    }
    # every other part of the file (the second application, HTTP options) is the same, so
    # deploying the rollout file leaves the diabetes application untouched
    files = [yaml.safe_load((REPO / n).read_text()) for n in ("serve_config.yaml", name)]
    for config in files:
        del config["applications"][0]["deployments"][0]["user_config"]
    assert files[0] == files[1]
    assert [a["name"] for a in files[0]["applications"]] == ["iris", "diabetes"]
