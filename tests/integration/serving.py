"""Helpers for serving tests: deploy with Ray's own `serve deploy`, wait on Serve's REST
status, and drive bounded HTTP load."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from raysplit.cluster import TOKEN_PATH
from raysplit.traffic import wait_ready
from tests.conftest import REPO, Cluster, free_port

SERVE = Path(sys.executable).parent / "serve"
APP = "iris"


@dataclass
class Reply:
    status: int
    variant: str | None
    replica: str | None
    body: dict[str, Any]


class Deployer:
    """Deploys variations of the repository's serve_config.yaml to the session cluster."""

    def __init__(self, cluster: Cluster, workdir: Path):
        self.cluster = cluster
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        self._count = 0

    def _status(self) -> dict[str, Any]:
        token = TOKEN_PATH.read_text().strip()
        response = requests.get(
            f"{self.cluster.info.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json().get("applications", {}).get(APP, {})

    def replica_ids(self) -> set[str]:
        """The running replicas, as Serve's controller lists them."""
        return set(self.replica_nodes())

    def replica_nodes(self) -> dict[str, str]:
        """Running replica id -> the Ray node it runs on."""
        replicas = self._status()["deployments"]["Ingress"]["replicas"]
        return {r["replica_id"]: r["node_id"] for r in replicas if r["state"] == "RUNNING"}

    def replica_pids(self) -> dict[str, int]:
        """Running replica id -> its worker process id, from Ray's state API."""
        from ray.util.state import list_actors

        actors = list_actors(
            address=self.cluster.info.address,
            filters=[("class_name", "=", f"ServeReplica:{APP}:Ingress"), ("state", "=", "ALIVE")],
            detail=True,
        )
        return {a.name.rsplit("#", 1)[-1]: a.pid for a in actors}

    def config_file(
        self,
        user_config: dict[str, Any],
        actor_options: dict[str, Any] | None = None,
        deployment_options: dict[str, Any] | None = None,
        serve_options: dict[str, Any] | None = None,
    ) -> Path:
        config = {**copy.deepcopy(self.base), **(serve_options or {})}
        config["http_options"]["port"] = self.port
        deployment = config["applications"][0]["deployments"][0]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 2  # two replicas: stickiness must hold across them
        deployment["ray_actor_options"] = {"num_cpus": 0.25, **(actor_options or {})}
        deployment.update(deployment_options or {})
        deployment["user_config"] = user_config
        self._count += 1
        path = self.workdir / f"serve_config_{self._count}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def deploy(
        self,
        user_config: dict[str, Any],
        expect: str = "RUNNING",
        actor_options: dict[str, Any] | None = None,
        **options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """`serve deploy` and wait until Serve reports ``expect`` for this deploy.

        ``options``: ``deployment_options`` and ``serve_options`` for :meth:`config_file`.
        """
        before = self._status().get("last_deployed_time_s", 0)
        subprocess.run(
            [
                str(SERVE),
                "deploy",
                str(self.config_file(user_config, actor_options, **options)),
                "-a",
                self.cluster.info.dashboard_url,
            ],
            env={**os.environ, **self.cluster.env},
            check=True,
            capture_output=True,
            timeout=120,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = self._status()
            fresh = status.get("last_deployed_time_s", 0) > before
            if fresh and status.get("status") == expect:
                if expect == "RUNNING":
                    wait_ready(self.url, 60)
                return status
            time.sleep(0.5)
        raise AssertionError(f"application never reached {expect}: {self._status()}")

    def predict(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> Reply:
        response = (session or requests).post(
            f"{self.url}/predict", json=body, headers=headers, timeout=30
        )
        return Reply(
            response.status_code,
            response.headers.get("x-variant"),
            response.headers.get("x-raysplit-replica"),
            response.json(),
        )

    def load(
        self,
        count: int,
        headers: Callable[[int], dict[str, str]] | None = None,
        threads: int = 8,
        body: Any = None,
    ) -> list[Reply]:
        """Send ``count`` predictions from ``threads`` connections; every reply is kept."""
        local = threading.local()

        def one(i: int) -> Reply:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            return self.predict(body or RECORD, headers(i) if headers else None, local.session)

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(count)))

    def history(self, request_ids: set[str], **params: Any) -> list[dict[str, Any]]:
        """Predictions recorded for ``request_ids`` on any replica (asks until all found)."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for _ in range(40):
            rows = requests.get(
                f"{self.url}/predictions/history", params={"limit": 2000, **params}, timeout=10
            ).json()
            for row in rows["predictions"]:
                if row["request_id"] in request_ids:
                    found[(row["request_id"], row["variant"])] = row
            if {rid for rid, _ in found} >= request_ids:
                break
            time.sleep(0.2)
        return list(found.values())


RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def variants(champion: float = 50, challenger: float = 50, shadow: bool = False) -> list[dict]:
    found = [
        {"name": "champion", "model_uri": "models:/iris@champion", "weight": champion},
        {"name": "challenger", "model_uri": "models:/iris@challenger", "weight": challenger},
    ]
    if shadow:
        found.append({"name": "shadow-hgb", "model_uri": "models:/iris/3", "shadow": True})
    return found


def user_config(**overrides) -> dict:
    return {"experiment": "iris-ab", "salt": "test", "variants": variants(), **overrides}
