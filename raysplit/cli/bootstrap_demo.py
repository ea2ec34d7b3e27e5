"""First start of a demo stack (compose, a fresh cluster): register a champion and a
challenger for each application of serve_config.yaml (the iris and the diabetes
experiment) unless the registry has them already.

    python -m raysplit.cli.bootstrap_demo
"""

from __future__ import annotations

import sys
from importlib.resources import files

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysplit.cli.main import main as raysplit
from raysplit.core.settings import Locations

# registered model -> alias -> extra `raysplit tune` arguments, as `make demo` runs them:
# iris, a broad search and a k-NN-only one; diabetes, ridge against a random forest
SEARCHES: dict[str, dict[str, list[str]]] = {
    "iris": {
        "champion": [],
        "challenger": ["--families", "knn", "--num-samples", "8"],
    },
    "diabetes": {
        "champion": ["--families", "ridge", "--num-samples", "6"],
        "challenger": ["--families", "random_forest", "--num-samples", "4"],
    },
}


def has_alias(client: MlflowClient, name: str, alias: str) -> bool:
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def bootstrap() -> int:
    locations = Locations.resolve()
    client = MlflowClient(locations.mlflow_tracking_uri, locations.mlflow_registry_uri)
    for name, searches in SEARCHES.items():
        config = str(files("tune") / "configs" / f"{name}.yaml")
        for alias, extra in searches.items():
            if has_alias(client, name, alias):
                print(f"models:/{name}@{alias} exists; not training")
                continue
            code = raysplit(["tune", "--config", config, *extra, "--alias", alias])
            if code:
                return code
    return 0


if __name__ == "__main__":
    sys.exit(bootstrap())
