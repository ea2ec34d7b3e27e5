"""The pure parts of refusing a deploy: the config's name, the status a replica shows, the
field each problem names, and the capacity warning of `raysplit check`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysplit.cli.deploy_check import capacity_warning, ingresses, replica_cpus
from serve_app.predict.deploy_status import DeployPhase, DeployStatus
from serve_app.predict.prepare import ConfigRefused, config_hash, validate

REPO = Path(__file__).resolve().parents[2]
GOOD = {
    "experiment": "iris-ab",
    "variants": [
        {"name": "champion", "model_uri": "models:/iris@champion", "weight": 50},
        {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": 50},
    ],
}


def test_a_config_hash_ignores_key_order_and_sees_every_value() -> None:
    reordered = {"variants": GOOD["variants"], "experiment": "iris-ab"}
    assert config_hash(reordered) == config_hash(GOOD)
    moved = {**GOOD, "variants": [{**GOOD["variants"][0], "weight": 51}, GOOD["variants"][1]]}
    assert config_hash(moved) != config_hash(GOOD)
    assert len(config_hash(GOOD)) == 12


def test_a_refusal_keeps_its_first_time_until_another_config_is_refused() -> None:
    applied = DeployStatus.applied("aaa")
    first = applied.refused("alias missing", "bbb", "aaa")
    assert first.status is DeployPhase.REFUSED and first.serving_config_hash == "aaa"
    assert first.since is not None and first.since >= applied.since
    again = first.refused("alias missing", "bbb", "aaa")
    assert again.since == first.since
    other = first.model_copy(update={"since": 1.0}).refused("bad rollout", "ccc", "aaa")
    assert other.since != 1.0 and other.refused_config_hash == "ccc"


def test_the_status_line_says_what_is_refused_and_what_is_served() -> None:
    status = DeployStatus(from_store=True, serving_config_hash="aaa").refused("why", "bbb", "aaa")
    line = status.line("iris")
    assert line.startswith("iris: REFUSED config bbb, serving the stored last accepted config aaa")
    assert line.endswith(": why")
    assert DeployStatus.applied("aaa").line("iris") == "iris: APPLIED config aaa"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"rollout": {"candidate": "nobody", "steps": [5, 50]}}, "user_config.rollout", "nobody"),
        ({"control": "nobody"}, "user_config.control", "not a variant"),
        ({"weight_typo": 1}, "user_config.weight_typo", "Extra inputs"),
        (
            {"variants": [{"name": "a", "model_uri": "s3://x", "weight": 1}]},
            "user_config.variants.0.model_uri",
            "is not models:/",
        ),
        (
            {"variants": [{**GOOD["variants"][0], "weight": 0}]},
            "user_config.variants",
            "all zero",
        ),
    ],
)
def test_each_refused_field_is_named(change: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigRefused) as refused:
        validate({**GOOD, **change})
    (problem,) = refused.value.problems
    assert problem.field == field and words in problem.message, problem


def test_every_problem_is_listed_not_only_the_first() -> None:
    with pytest.raises(ConfigRefused) as refused:
        validate({**GOOD, "sticky_key": "", "salt": 3})
    assert [p.field for p in refused.value.problems] == [
        "user_config.sticky_key",
        "user_config.salt",
    ]


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config_rollout.yaml"])
def test_the_shipped_configs_fit_the_two_cores_they_are_for(name: str) -> None:
    config = yaml.safe_load((REPO / name).read_text())
    assert replica_cpus(config) <= 2
    assert capacity_warning(config, 2.0) is None
    assert [app for app, _ in ingresses(config)] == ["iris", "diabetes"]


def test_replica_maxima_beyond_the_cluster_are_warned_about() -> None:
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] = 4
    assert replica_cpus(config) == 2.5
    warning = capacity_warning(config, 2.0)
    assert warning is not None and warning.warning
    assert "up to 2.5 CPUs" in warning.message and "has 2" in warning.message
    assert capacity_warning(config, None) is None  # no cluster to ask: nothing to say
