"""Helpers for serving tests: deploy through the Ray dashboard's Serve REST API (what
`serve deploy` sends; the CLI itself on request), wait on Serve's REST status, and drive
bounded HTTP load."""

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

from raysplit.cli.cluster import TOKEN_PATH
from raysplit.cli.traffic import wait_ready
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
    """Deploys variations of the repository's serve_config.yaml to the session cluster.

    A test leaves what it deployed running (no deploy back to the default afterwards: one
    with other actor options replaces every replica, twice over): each test deploys the
    config it needs, or ensure()s it when any deploy of that config will do.
    """

    def __init__(self, cluster: Cluster, workdir: Path):
        self.cluster = cluster
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = yaml.safe_load((REPO / "serve_config.yaml").read_text())
        self._count = 0
        self._running: dict[str, Any] | None = None  # the last deploy, if it reached RUNNING
        self._serving: dict[str, Any] | None = None  # the last deploy that reached RUNNING

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN_PATH.read_text().strip()}"}

    def applications(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.cluster.info.dashboard_url}/api/serve/applications/",
            headers=self._headers(),
            timeout=10,
        )
        response.raise_for_status()
        return response.json().get("applications", {})

    def _status(self) -> dict[str, Any]:
        return self.applications().get(APP, {})

    def replica_ids(self) -> set[str]:
        """The running replicas, as Serve's controller lists them."""
        return set(self.replica_nodes())

    def running_replicas(
        self, count: int = 2, without: set[str] | frozenset[str] = frozenset(), timeout: float = 120
    ) -> set[str]:
        """The running replicas once Serve lists ``count`` of them and none of ``without``
        (replicas a test killed). A victim is picked from such a settled set: one CI run
        listed a single running replica a moment after listing two (one Serve was
        replacing)."""
        deadline = time.monotonic() + timeout
        while len(ids := self.replica_ids()) != count or ids & without:
            assert time.monotonic() < deadline, (
                f"Serve lists {sorted(ids)} running, not {count} without {sorted(without)}"
            )
            time.sleep(0.5)
        return ids

    def replica_states(self) -> dict[str, str]:
        """Every replica Serve's controller lists, in any state -> that state (STARTING,
        RUNNING, STOPPING...): what a wait follows to tell a slow start from none."""
        replicas = self._status()["deployments"]["Ingress"]["replicas"]
        return {r["replica_id"]: r["state"] for r in replicas}

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

    def config(
        self,
        user_config: dict[str, Any],
        actor_options: dict[str, Any] | None = None,
        deployment_options: dict[str, Any] | None = None,
        serve_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The repository's serve_config.yaml with this deploy's changes."""
        config = {**copy.deepcopy(self.base), **(serve_options or {})}
        # the iris application alone (serve_config.yaml also ships diabetes at /diabetes:
        # test_two_applications.py deploys both)
        config["applications"] = [a for a in config["applications"] if a["name"] == APP]
        config["http_options"]["port"] = self.port
        deployment = config["applications"][0]["deployments"][0]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 2  # two replicas: stickiness must hold across them
        deployment["ray_actor_options"] = {"num_cpus": 0.25, **(actor_options or {})}
        deployment.update(deployment_options or {})
        deployment["user_config"] = user_config
        return config

    def config_file(
        self,
        user_config: dict[str, Any],
        actor_options: dict[str, Any] | None = None,
        deployment_options: dict[str, Any] | None = None,
        serve_options: dict[str, Any] | None = None,
    ) -> Path:
        """:meth:`config` written as a serve config YAML file, as a user keeps it."""
        config = self.config(user_config, actor_options, deployment_options, serve_options)
        self._count += 1
        path = self.workdir / f"serve_config_{self._count}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def deploy(
        self,
        user_config: dict[str, Any],
        expect: str = "RUNNING",
        actor_options: dict[str, Any] | None = None,
        cli: bool = False,
        **options: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Deploy and wait until Serve reports ``expect`` for this deploy.

        The whole config goes to the dashboard's ``PUT /api/serve/applications/``, the
        request `serve deploy` sends; ``cli=True`` runs the user's own `serve deploy FILE`.
        ``options``: ``deployment_options`` and ``serve_options`` for :meth:`config`.
        """
        config = self.config(user_config, actor_options, **options)
        if not cli:
            return self.apply(config, expect)
        before = self._deploy_times()
        self._running = None
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
        return self._wait(config, before, expect)

    def apply(self, config: dict[str, Any], expect: str | None = "RUNNING") -> dict[str, Any]:
        """PUT a whole serve config (every application in it) to the dashboard, the
        request `serve deploy` sends, and wait as :meth:`deploy` does (``expect=None``:
        return once the dashboard took it, the test follows the applications itself)."""
        before = self._deploy_times()
        self._running = None
        response = requests.put(
            f"{self.cluster.info.dashboard_url}/api/serve/applications/",
            json=config,
            headers=self._headers(),
            timeout=120,
        )
        assert response.status_code == 200, f"deploy refused: {response.text[:2000]}"
        if expect is None:
            self._running = None
            return {}
        return self._wait(config, before, expect)

    def _deploy_times(self) -> dict[str, float]:
        return {n: a.get("last_deployed_time_s", 0) for n, a in self.applications().items()}

    def _wait(
        self, config: dict[str, Any], before: dict[str, float], expect: str
    ) -> dict[str, Any]:
        """Until every application of ``config`` reports ``expect`` for this deploy; the
        iris application's status."""
        names = [a["name"] for a in config["applications"]]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            apps = self.applications()
            if all(
                apps.get(n, {}).get("last_deployed_time_s", 0) > before.get(n, 0)
                and apps[n].get("status") == expect
                for n in names
            ):
                if expect == "RUNNING":
                    # the proxy learns of new replicas after Serve says RUNNING
                    wait_ready(self.url, max(60.0, deadline - time.monotonic()))
                    self._running = self._serving = config
                return apps.get(APP, {})
            time.sleep(0.2)
        raise AssertionError(f"not every application reached {expect}: {self.applications()}")

    def ensure(
        self,
        user_config: dict[str, Any],
        actor_options: dict[str, Any] | None = None,
        after_refusal: bool = False,
        **options: dict[str, Any] | None,
    ) -> None:
        """Deploy this config unless it is what the last deploy left running (no identical
        deploy back to back). ``after_refusal``: also leave it when the last deploy was
        refused over it, since Serve keeps a refused deploy's predecessor serving (on one
        replica of two, if it had stopped the other for the rolling update)."""
        config = self.config(user_config, actor_options, **options)
        status = self._status().get("status")
        if config == self._running and status == "RUNNING":
            return
        if after_refusal and config == self._serving and status == "DEPLOY_FAILED":
            return
        self.deploy(user_config, actor_options=actor_options, **options)

    def last_running(self) -> dict[str, Any]:
        """A copy of the last whole config that reached RUNNING (what is deployed now,
        unless a later deploy failed)."""
        assert self._serving is not None, "nothing was deployed through this Deployer yet"
        return copy.deepcopy(self._serving)

    def every_replica(
        self, replicas: int, wanted: Callable[[dict[str, Any]], bool], timeout_s: float = 60
    ) -> dict[str, dict[str, Any]]:
        """``GET /models`` of each of ``replicas`` replicas (by replica id) once
        ``wanted(models)`` holds on all of them: the ingress spreads requests, so asking
        again reaches the others."""
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        while True:
            models = requests.get(f"{self.url}/models", timeout=15).json()
            if wanted(models):
                seen[models["replica"]] = models
            else:
                seen.pop(models["replica"], None)
            if len(seen) >= replicas:
                return seen
            assert time.monotonic() < deadline, f"after {timeout_s:g} s: {models['deploy']}"
            time.sleep(0.1)

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

    def history(
        self, request_ids: set[str], timeout: float = 30.0, **params: Any
    ) -> list[dict[str, Any]]:
        """Predictions recorded for ``request_ids`` on any replica: asks until every id is
        found, and fails naming the missing ids otherwise (never a silently partial list).

        The route returns only the newest ``HISTORY_LIMIT`` matching rows and has no
        paging, so ids that fell out of that window fail here rather than going unseen.
        """
        found: dict[tuple[str, str], dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while True:
            response = requests.get(
                f"{self.url}/predictions/history",
                params={"limit": HISTORY_LIMIT, **params},
                timeout=10,
            )
            response.raise_for_status()
            rows = response.json()["predictions"]
            for row in rows:
                if row["request_id"] in request_ids:
                    found[(row["request_id"], row["variant"])] = row
            missing = request_ids - {rid for rid, _ in found}
            if not missing:
                return list(found.values())
            if time.monotonic() > deadline:
                window = "a full window" if len(rows) >= HISTORY_LIMIT else f"{len(rows)} rows"
                raise AssertionError(
                    f"{len(missing)} of {len(request_ids)} request ids never appeared in"
                    f" /predictions/history ({window} with {params}): {sorted(missing)[:5]}"
                )
            time.sleep(0.2)


HISTORY_LIMIT = 2000  # the route's MAX_HISTORY
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
