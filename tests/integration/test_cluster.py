"""`raysplit up` as the session's cluster fixture ran it: authenticated, and alone."""

from __future__ import annotations

import stat

import pytest
import requests

from raysplit.cli.cluster import TOKEN_PATH, read_state, up
from raysplit.core.errors import RaysplitError
from tests.conftest import Cluster, free_port

pytestmark = pytest.mark.integration


def test_dashboard_requires_the_token_which_only_its_owner_reads(cluster: Cluster) -> None:
    url = f"{cluster.info.dashboard_url}/api/serve/applications/"
    assert requests.get(url, timeout=10).status_code == 401
    token = TOKEN_PATH.read_text().strip()
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).ok
    assert stat.S_IMODE(TOKEN_PATH.stat().st_mode) == 0o600


def test_a_second_up_for_the_same_home_is_refused(cluster: Cluster) -> None:
    with pytest.raises(RaysplitError, match="already running at"):
        up(cluster.locations, ray_port=free_port())
    assert read_state(cluster.locations) == cluster.info
