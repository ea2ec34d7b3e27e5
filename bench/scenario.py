"""What bench/soak.py and bench/overload.py share beyond bench/serving.py's ``Cluster``.

A deploy that tries again: ``Cluster.deploy`` raises on the first failure with the CLI's
output captured; on a loaded machine the dashboard can refuse or time out a deploy once
and take the next, and an hour-long run should not end on that. And a check that the
cluster's ingress port is still its own (``foreign_listeners``).
"""

from __future__ import annotations

import contextlib
import subprocess
import time

import psutil
from serving import Cluster


def deploy(cluster: Cluster, user_config: dict, deployment: dict | None = None) -> int:
    """``cluster.deploy``, up to 3 attempts 10 s apart; the attempts it took."""
    attempt = 1
    while True:
        try:
            cluster.deploy(user_config, deployment)
            return attempt
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or b"").decode(errors="replace").strip()[-1500:]
            print(f"serve deploy failed (attempt {attempt}): {said}", flush=True)
            if attempt == 3:
                raise
        attempt += 1
        time.sleep(10)


def foreign_listeners(cluster: Cluster) -> list[str]:
    """Processes outside this cluster listening on its HTTP port. bench/serving.py picks
    free ports once; HAProxy binds with SO_REUSEPORT, so another cluster started later on
    the same machine can get the same port and the kernel then splits connections between
    the two (seen on a shared machine as 401s from a cluster with API keys)."""
    own = {p.pid for p in cluster.serving("iris")()}
    port = cluster.ports["http"]
    found = set()
    for connection in psutil.net_connections(kind="tcp"):
        listening = connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
        if listening and connection.pid is not None and connection.pid not in own:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(connection.pid)
                found.add(f"{connection.pid} {' '.join(process.cmdline())[:80]}")
    return sorted(found)
