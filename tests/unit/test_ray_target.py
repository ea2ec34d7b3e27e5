"""`raysplit tune` joins the running raysplit cluster instead of starting a second Ray on
the same cores; an explicit RAY_ADDRESS wins; with neither, a local instance as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysplit.cli.cluster import ClusterInfo, running_address
from raysplit.core.settings import Locations
from tune.search import RayTarget, ray_target


def test_the_running_cluster_is_joined() -> None:
    assert ray_target(None, "127.0.0.1:6380") == RayTarget(
        "127.0.0.1:6380", "Ray: joined the raysplit cluster at 127.0.0.1:6380"
    )


def test_an_explicit_ray_address_wins_over_the_cluster() -> None:
    target = ray_target("10.0.0.5:6379", "127.0.0.1:6380")
    assert target == RayTarget("10.0.0.5:6379", "Ray: joined RAY_ADDRESS=10.0.0.5:6379")


@pytest.mark.parametrize("env", [None, ""])
def test_without_a_cluster_a_local_instance_starts(env: str | None) -> None:
    """An empty RAY_ADDRESS is no address (Ray itself reads it so)."""
    target = ray_target(env, None)
    assert target.address is None
    assert target.line == (
        "Ray: started a local instance (no raysplit cluster is running: raysplit up starts one)"
    )


def test_a_state_file_without_its_processes_is_no_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cluster.json outlives a reboot or a killed head: only live processes make it one."""
    monkeypatch.setenv("RAYSPLIT_HOME", str(tmp_path))
    locations = Locations.resolve()
    assert running_address(locations) is None  # no state at all
    stale = ClusterInfo(
        address="127.0.0.1:6380",
        dashboard_url="http://127.0.0.1:8265",
        metrics_export_port=8085,
        temp_dir=tmp_path / "no-such-ray-temp-dir",
        fast_path=True,
    )
    (tmp_path / "cluster.json").write_text(stale.model_dump_json())
    assert running_address(locations) is None
