"""Each cluster's fast-path replicas, fallback proxies and HAProxy listeners get ports of
their own, so two clusters on one host never route to each other (a bench soak and a fault
test saw answers, and events, from another cluster's replicas on Serve's shared default
range; two test clusters' upgrade traffic reached the other's application through the
shared 8500) and a second cluster's HAProxy can bind its metrics and stats ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from raysplit.cli.cluster import (
    FALLBACK_PORT_VARS,
    HAPROXY_PORT_VARS,
    REPLICA_PORT_VARS,
    SERVE_PORT_VARS,
    serve_ports,
    serving_environment,
)
from raysplit.core.settings import Locations


def ports(home: Path) -> tuple[int, int, int, int]:
    block = serve_ports(home)
    return tuple(int(block[var]) for var in REPLICA_PORT_VARS)  # type: ignore[return-value]


def test_the_block_is_the_homes_own_and_clear_of_rays_and_the_kernels_ports() -> None:
    http_min, http_max, grpc_min, grpc_max = ports(Path("/srv/raysplit-a"))
    assert 20000 <= http_min < http_max < grpc_min < grpc_max <= 29999  # Ray's workers: <20000
    assert (http_max - http_min + 1, grpc_max - grpc_min + 1) == (198, 198)
    block = serve_ports(Path("/srv/raysplit-a"))
    fallback = [int(block[var]) for var in FALLBACK_PORT_VARS]
    assert fallback == [http_max + 1, grpc_max + 1]  # in the block, in no replica range
    haproxy = [int(block[var]) for var in HAPROXY_PORT_VARS]
    assert haproxy == [http_max + 2, grpc_max + 2]
    assert grpc_max + 2 - http_min + 1 == 400  # the whole block, no port handed out twice
    assert len(set(block.values())) == len(block)
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
    for var in SERVE_PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAYSPLIT_HOME", str(tmp_path))
    locations = Locations.resolve()
    fast = serving_environment(locations, tmp_path / "ray", fast_path=True)
    assert {var: fast[var] for var in SERVE_PORT_VARS} == serve_ports(tmp_path)
    assert not set(SERVE_PORT_VARS) & set(serving_environment(locations, tmp_path, False))
    monkeypatch.setenv(FALLBACK_PORT_VARS[0], "8500")  # the operator's own ports win
    own = serving_environment(locations, tmp_path, True)
    assert not set(REPLICA_PORT_VARS + FALLBACK_PORT_VARS) & set(own)
    assert {var: own[var] for var in HAPROXY_PORT_VARS} == {
        var: fast[var] for var in HAPROXY_PORT_VARS
    }  # what the operator left alone still comes from the block
    # HAProxy's two listeners are set one by one: the stats port the operator's, the
    # metrics port still the block's (`up` records both in cluster.json)
    monkeypatch.setenv(HAPROXY_PORT_VARS[1], "8404")
    own = serving_environment(locations, tmp_path, True)
    assert HAPROXY_PORT_VARS[1] not in own
    assert own[HAPROXY_PORT_VARS[0]] == fast[HAPROXY_PORT_VARS[0]]
    monkeypatch.setenv(HAPROXY_PORT_VARS[0], "9101")
    assert not set(SERVE_PORT_VARS) & set(serving_environment(locations, tmp_path, True))
