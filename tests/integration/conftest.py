"""The serving fixtures integration modules share: one deployment per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Cluster
from tests.integration.serving import Deployer, user_config
from tune.config import TuneSpec
from tune.search import run_search


@pytest.fixture(scope="session")
def deployer(
    cluster: Cluster, ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployer]:
    """Three iris versions registered by real searches into the cluster's registry
    (v1 champion, v2 challenger, v3 for shadowing), then the app deployed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYSPLIT_HOME", str(cluster.locations.home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for family, alias in (
            ("knn", "champion"),
            ("logistic_regression", "challenger"),
            ("hist_gradient_boosting", "candidate"),
        ):
            spec = {
                "dataset": {"name": "iris"},
                "search": {"families": [family], "num_samples": 2, "cv_folds": 3},
                "register": {"model_name": "iris", "alias": alias},
            }
            run_search(TuneSpec.model_validate(spec), cluster.locations)
    deployer = Deployer(cluster, tmp_path_factory.mktemp("deploys"))
    deployer.deploy(user_config())
    yield deployer
