"""The README's "your own model" walk-through, run as written: its commands are read out of
README.md (the blocks marked ``<!-- walkthrough ... -->``), so the README cannot drift
from what raysplit does. From a CSV the walk-through writes to the removal of its
experiment and model, on the session's cluster (one Ray cluster per test session: the
walk-through's applications are deployed beside the iris application the other tests
use, and iris is left as it was)."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests
import yaml

from raysplit.eventstore.store import EventStore
from tests.conftest import REPO, Cluster
from tests.integration.serving import Deployer, user_config

pytestmark = pytest.mark.integration

MARKER = re.compile(r"<!-- walkthrough(?:-(file|append|remove): (\S+))? -->")
FENCE = re.compile(r"```\w*\n(.*?)```", re.S)


@dataclass
class Step:
    """One marked piece of the walk-through: commands to run, or a file to write, append
    to or take the appended block out of again."""

    kind: str  # run | file | append | remove
    target: str | None
    text: str


def walkthrough_steps(readme: str) -> list[Step]:
    steps = []
    for marker in MARKER.finditer(readme):
        kind, target = marker.group(1) or "run", marker.group(2)
        if kind == "remove":
            steps.append(Step(kind, target, ""))
            continue
        block = FENCE.search(readme, marker.end())
        assert block is not None, f"no code block after {marker.group(0)}"
        steps.append(Step(kind, target, block.group(1)))
    return steps


def commands(step: Step) -> list[str]:
    return [line for line in step.text.splitlines() if line.strip() and not line.startswith("#")]


def serve_config_text(deployer: Deployer) -> str:
    """The user's serve_config.yaml before the walk-through: what the other tests serve
    (iris on this cluster's ports), with ``applications:`` last, as the shipped file has it."""
    config = deployer.config(user_config())
    apps = config.pop("applications")
    return (
        yaml.safe_dump(config, sort_keys=False)
        + "applications:\n"
        + textwrap.indent(yaml.safe_dump(apps, sort_keys=False), "  ")
    )


def test_the_readme_walkthrough_runs_end_to_end(
    cluster: Cluster, deployer: Deployer, tmp_path: Path
) -> None:
    steps = walkthrough_steps((REPO / "README.md").read_text())
    assert [s.kind for s in steps].count("run") >= 6, "the walk-through lost its commands"
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    base = serve_config_text(deployer)
    (tmp_path / "serve_config.yaml").write_text(base)
    env = {**os.environ, **cluster.env, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS")  # `raysplit tune` must find the raysplit cluster by itself
    # the test cluster's ingress is on a free port, not serve_config.yaml's 8000: the
    # setting a user with another port makes too (the dashboard's is found by the CLI)
    env["RAYSPLIT_INGRESS_URL"] = deployer.url
    said: dict[str, str] = {}
    try:
        for step in steps:
            path = tmp_path / (step.target or "")
            if step.kind == "file":
                path.write_text(step.text)
            elif step.kind == "append":
                path.write_text(path.read_text() + step.text)
            elif step.kind == "remove":
                path.write_text(base)
            else:
                for command in commands(step):
                    done = subprocess.run(
                        command,
                        shell=True,
                        cwd=tmp_path,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=900,
                    )
                    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                    said[command] = done.stdout
                if "sed -i" in step.text:  # the split was changed and deployed again
                    served = requests.get(f"{deployer.url}/wine/models", timeout=30).json()
                    assert {v["name"]: v["weight"] for v in served["variants"]} == {
                        "champion": 50,
                        "challenger": 50,
                    }
        outputs = list(said.items())
        searches = [out for command, out in outputs if " tune " in command]
        assert len(searches) == 2
        assert "Ray: joined the raysplit cluster" in searches[0] + searches[1]
        assert "od280_od315_of_diluted_wines" in searches[0]  # the served names are said
        traffic = next(out for command, out in outputs if " traffic " in command)
        assert "300 ok, 0 failed" in traffic
        report = next(out for command, out in outputs if " report " in command)
        assert "champion" in report and "challenger" in report
        listed = next(out for command, out in outputs if "experiments list" in command)
        assert "wine-ab" in listed
        # removed: no application, no event rows, no registered model
        apps = deployer.applications()
        deleting = time.monotonic() + 300  # Serve stops the replicas after the deploy returns
        while apps.get("wine", {}).get("status") == "DELETING" and time.monotonic() < deleting:
            time.sleep(0.5)
            apps = deployer.applications()
        assert "wine" not in apps and "iris" in apps
        store = EventStore(cluster.locations.event_store_url)
        assert "wine-ab" not in {span.experiment for span in store.experiment_spans()}
        store.dispose()
        mlflow.set_tracking_uri(cluster.locations.mlflow_tracking_uri)
        assert "wine" not in {m.name for m in mlflow.MlflowClient().search_registered_models()}
    finally:
        deployer._running = None  # the next test deploys what it needs
