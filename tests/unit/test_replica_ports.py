"""Each cluster's fast-path replicas get ports of their own, so two clusters on one host
never route to each other's replicas (a bench soak and a fault test saw answers, and
events, from another cluster's replicas on Serve's shared default range)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from raysplit.cluster import REPLICA_PORT_VARS, replica_port_range, serving_environment
from raysplit.core.settings import Locations


def ports(home: Path) -> tuple[int, int, int, int]:
    block = replica_port_range(home)
    return tuple(int(block[var]) for var in REPLICA_PORT_VARS)  # type: ignore[return-value]


def test_the_block_is_the_homes_own_and_clear_of_rays_and_the_kernels_ports() -> None:
    http_min, http_max, grpc_min, grpc_max = ports(Path("/srv/raysplit-a"))
    assert 20000 <= http_min < http_max < grpc_min < grpc_max <= 29999  # Ray's workers: <20000
    assert (http_max - http_min + 1, grpc_max - grpc_min + 1) == (200, 200)
    assert ports(Path("/srv/raysplit-a")) == (http_min, http_max, grpc_min, grpc_max)
    other = ports(Path("/srv/raysplit-b"))
    assert other[0] > http_max + 200 or other[3] < http_min  # disjoint blocks


def test_a_block_with_a_port_in_use_is_passed_over() -> None:
    home = Path("/srv/raysplit-busy")
    first = ports(home)[0]
    with socket.socket() as taken:
        taken.bind(("", first + 17))
        moved = ports(home)
    assert moved[0] != first
    assert not moved[0] <= first + 17 <= moved[3]


def test_the_head_gets_the_block_only_on_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in REPLICA_PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAYSPLIT_HOME", str(tmp_path))
    locations = Locations.resolve()
    fast = serving_environment(locations, tmp_path / "ray", fast_path=True)
    assert {var: fast[var] for var in REPLICA_PORT_VARS} == replica_port_range(tmp_path)
    assert not set(REPLICA_PORT_VARS) & set(serving_environment(locations, tmp_path, False))
    monkeypatch.setenv(REPLICA_PORT_VARS[0], "31000")  # the operator's own range wins
    assert REPLICA_PORT_VARS[0] not in serving_environment(locations, tmp_path, True)
