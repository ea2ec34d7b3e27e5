"""CPU per prediction: the kernel's accounting of every serving process, per request served.

Requests per second on a shared 2-core machine move with whatever else runs on it; the
CPU time a server spends per request moves much less, and it is what a prediction costs
on any cluster (divide a core's microseconds by it to get a core's predictions per
second). So every measured run also reads user + system CPU time (``psutil``'s
``cpu_times()``, i.e. the kernel's utime and stime, including children it has reaped) of
every process serving the system under test, before and after the run, and divides the
difference by the requests wrk counted.

What counts as serving: for a Ray cluster, every process of it (``cluster_processes(temp_dir)``
in raysplit/cli/cluster.py: GCS, raylet, dashboard and its agents, the Serve controller,
proxies, HAProxy, replicas, writers), except the replicas of *other* applications on the
same cluster, which sit idle while this one is measured; for a uvicorn server, its master
and every worker. Never the load generator: wrk is a child of the benchmark, not of
any server. A process that exits during a run loses the CPU it used in it (none is
expected to); one that starts during it (an autoscaled replica) counts from zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

# Process groups for the breakdown, first match wins (on the process name and command line).
GROUPS = (
    ("HAProxy", "haproxy"),
    ("replicas", "ServeReplica:"),
    ("proxies", "ProxyActor"),
    ("controller", "ServeController"),
    ("raylet", "raylet"),
    ("GCS", "gcs_server"),
    ("dashboard", "dashboard"),
)


def _group(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        text = process.name() + " " + " ".join(process.cmdline())
        for group, needle in GROUPS:
            if needle in text:
                return group
    return "other"


@dataclass
class Snapshot:
    """CPU seconds (user + system) of each process, its start time and group, by pid."""

    seconds: dict[int, float]
    started: dict[int, float]
    groups: dict[int, str]


def snapshot(processes: list[psutil.Process]) -> Snapshot:
    seconds, started, groups = {}, {}, {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            started[process.pid] = process.create_time()
            seconds[process.pid] = (
                times.user + times.system + times.children_user + times.children_system
            )
            groups[process.pid] = _group(process)
    return Snapshot(seconds, started, groups)


def used(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots (a new process counts from 0).

    A pid is the same process in both when its start times agree to within 5 s:
    psutil adds the boot time the kernel derives from the wall clock, which can move by
    a second between reads (an exact comparison once counted a process's whole lifetime
    into one run here), so they are never compared exactly.
    """
    spent: dict[str, float] = {}
    for pid, seconds in after.seconds.items():
        same = pid in before.seconds and abs(before.started[pid] - after.started[pid]) < 5.0
        group = after.groups[pid]
        spent[group] = spent.get(group, 0.0) + seconds - (before.seconds[pid] if same else 0.0)
    return spent


def tree(pid: int) -> list[psutil.Process]:
    """A server process and all its descendants (uvicorn's master and workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def ray_cluster(temp_dir: Path, app: str) -> Callable[[], list[psutil.Process]]:
    """The processes of the Ray cluster in ``temp_dir`` that serve application ``app``:
    all of them but other applications' replicas."""
    from raysplit.cli.cluster import cluster_processes

    own = f"ServeReplica:{app}:"

    def serving() -> list[psutil.Process]:
        found = []
        for process in cluster_processes(temp_dir):
            with contextlib.suppress(psutil.Error):
                text = " ".join(process.cmdline())
                if "ServeReplica:" in text and own not in text:
                    continue
                found.append(process)
        return found

    return serving
