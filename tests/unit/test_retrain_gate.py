"""The rule that decides whether a retrained version takes the challenger alias."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tune.retraining.gate import GateConfig, IncumbentScore, decide_gate

GATE = GateConfig(margin=0.01)


def held(alias: str, version: str, score: float) -> IncumbentScore:
    return IncumbentScore(alias=alias, version=version, score=score)


def test_beating_every_incumbent_by_the_margin_promotes() -> None:
    decision = decide_gate(
        "accuracy", "max", 0.95, [held("champion", "3", 0.93), held("challenger", "4", 0.94)], GATE
    )
    assert decision.promote
    assert "@champion (version 3) 0.9300" in decision.reason


def test_falling_short_of_one_incumbent_blocks_and_names_it() -> None:
    decision = decide_gate(
        "accuracy", "max", 0.95, [held("champion", "3", 0.90), held("challenger", "4", 0.945)], GATE
    )
    assert not decision.promote
    assert "@challenger (version 4)" in decision.reason
    assert "@champion" not in decision.reason  # the one it beat is not blamed
    assert "+0.0050, below the margin 0.01" in decision.reason


def test_a_tie_is_not_a_win() -> None:
    assert not decide_gate("accuracy", "max", 0.9, [held("champion", "1", 0.9)], GATE).promote


def test_lower_is_better_for_rmse() -> None:
    assert decide_gate("rmse", "min", 50.0, [held("champion", "1", 55.0)], GATE).promote
    assert not decide_gate("rmse", "min", 55.0, [held("champion", "1", 50.0)], GATE).promote


def test_an_alias_nobody_holds_is_nothing_to_beat() -> None:
    decision = decide_gate(
        "r2",
        "max",
        0.3,
        [IncumbentScore(alias="champion"), IncumbentScore(alias="challenger")],
        GATE,
    )
    assert decision.promote
    assert "nothing to beat" in decision.reason


def test_an_incumbent_that_could_not_be_scored_blocks_the_promotion() -> None:
    broken = IncumbentScore(alias="champion", version="2", error="ModelLoadError: corrupt")
    decision = decide_gate("accuracy", "max", 0.99, [broken], GATE)
    assert not decision.promote
    assert "could not be scored: ModelLoadError: corrupt" in decision.reason


def test_a_rolled_back_incumbent_is_no_bar_but_is_named() -> None:
    """The challenger that lost its rollout may still score 1.0 on paper (a k-NN on
    replayed rows): it must not block every later retrain, and the reason says why."""
    lost = IncumbentScore(alias="challenger", version="4", skipped="a rollout rolled it back")
    decision = decide_gate("accuracy", "max", 0.99, [held("champion", "1", 0.96), lost], GATE)
    assert decision.promote
    assert "beats @champion (version 1) 0.9600" in decision.reason
    assert "@challenger (version 4) not compared: a rollout rolled it back" in decision.reason
    only = decide_gate("accuracy", "max", 0.5, [lost], GATE)
    assert only.promote and "nothing to beat" in only.reason


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"margin": 0}, "greater than 0"),
        ({"against": ["champion", "champion"]}, "aliases repeat"),
        ({"against": ["not an alias"]}, "is not an alias name"),
        ({"margins": 0.1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_gate_configs_are_refused_naming_the_problem(config: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GateConfig.model_validate(config)
