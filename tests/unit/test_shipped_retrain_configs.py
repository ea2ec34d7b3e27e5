"""The retrain configs the repository ships are valid retrains: a typo there would only
show as a failed Ray job after the user has sent hundreds of labelled requests."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from serve_app.config.ingress import IngressConfig
from tests.conftest import REPO
from tune.config import load_raw
from tune.retrain import retrain_spec


def served_retrain(name: str) -> dict[str, Any]:
    """The iris application's ``retrain`` block, with what ``POST /retrain`` fills in."""
    config = yaml.safe_load((REPO / name).read_text())
    user_config = config["applications"][0]["deployments"][0]["user_config"]
    ingress = IngressConfig.model_validate(user_config)
    assert ingress.retrain is not None
    spec = dict(ingress.retrain)
    spec["register"] = {**spec["register"], "model_name": "iris"}
    spec["dataset"] = {
        **spec["dataset"],
        "events": {**spec["dataset"]["events"], "experiment": ingress.experiment},
    }
    return spec


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config_rollout.yaml"])
def test_the_served_retrain_block_is_a_gated_retrain_of_the_served_experiment(name: str) -> None:
    spec = retrain_spec(served_retrain(name))
    assert spec.dataset.events is not None and spec.dataset.events.experiment == "iris-ab"
    assert spec.registration.gate is not None and spec.registration.gate.margin == 0.01
    assert spec.registration.alias == "challenger"


def test_the_cli_retrain_config_is_a_gated_retrain_of_the_demo_experiment() -> None:
    spec = retrain_spec(load_raw(REPO / "tune/configs/iris_retrain.yaml", {}))
    assert spec.dataset.events is not None and spec.dataset.events.experiment == "iris-ab"
    assert spec.dataset.events.min_rows == 500
    assert spec.registration.model_name == "iris"
    assert spec.registration.gate is not None
    assert spec.registration.gate.against == ("champion", "challenger")
