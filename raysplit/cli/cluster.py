"""`raysplit up` / `raysplit down`: a local Ray head with the environment serving needs.

The head gets token authentication (an open dashboard runs any code for whoever reaches
it), the HAProxy fast path, a metrics export port, and the data directory and tracking URI
that Serve replicas must share with the CLI. Everything the head writes lives in one temp
directory, which is also how `down` finds this cluster's processes and no one else's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psutil
from pydantic import BaseModel

from raysplit.cli.observability import write_prometheus_config
from raysplit.core.errors import RaysplitError
from raysplit.core.settings import DEFAULT_DASHBOARD_PORT, DEFAULT_METRICS_EXPORT_PORT, Locations

DEFAULT_AGENT_PORT = 52365  # Ray's --dashboard-agent-listen-port default
# Serve's fast-path ports (see serve_ports): blocks of 2 x 200 from 20000, each half a
# replica range followed by the fallback proxy of that protocol and one HAProxy port
REPLICA_PORT_VARS = (
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",
)
FALLBACK_PORT_VARS = ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
HAPROXY_PORT_VARS = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")
SERVE_PORT_VARS = REPLICA_PORT_VARS + FALLBACK_PORT_VARS + HAPROXY_PORT_VARS
REPLICA_PORT_BASE, REPLICA_PORTS, REPLICA_PORT_BLOCKS = 20000, 200, 25

STATE_FILE = "cluster.json"
MAX_TEMP_DIR = 24
CLUSTER_MARKER = "RAYSPLIT_CLUSTER"
TOKEN_PATH = Path.home() / ".ray" / "auth_token"
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}


class GcsRedis(BaseModel):
    """Where Ray's GCS keeps its tables when `up --gcs-redis URL` turns on GCS fault
    tolerance: a restarted gcs_server reloads them instead of starting an empty cluster."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    tls: bool = False
    # Ray's key prefix (RAY_external_storage_namespace): clusters sharing one Redis apart
    namespace: str

    @property
    def address(self) -> str:
        """The form ``RAY_REDIS_ADDRESS`` takes (``rediss://`` turns on TLS in Ray)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss://' if self.tls else ''}{host}:{self.port}"

    def shown(self) -> str:
        """The URL without its password, for output and logs."""
        user = f"{self.username}:***@" if self.password else (self.username and f"{self.username}@")
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.address.split('//')[-1]}"


def gcs_namespace(home: Path) -> str:
    """One Redis key namespace per data directory: stable, so a head restarted for the
    same RAYSPLIT_HOME finds its state; distinct, so two homes never read each other's."""
    return f"raysplit_{hashlib.sha1(str(home).encode()).hexdigest()[:12]}"


def parse_gcs_redis(url: str, namespace: str) -> GcsRedis:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT]`` (``rediss://`` for TLS) as Ray's GCS can
    use it, or a RaysplitError naming what it cannot use."""
    problem = f"--gcs-redis {url!r}"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise RaysplitError(
            f"{problem}: expected redis://HOST:PORT (or rediss://HOST:PORT for TLS)"
        )
    try:
        port = 6379 if parts.port is None else parts.port
    except ValueError as exc:
        raise RaysplitError(f"{problem}: {exc}") from None
    if not parts.hostname:
        raise RaysplitError(f"{problem}: no host")
    if port == 0:
        raise RaysplitError(f"{problem}: port 0 is not a Redis server's port")
    if parts.path not in ("", "/", "/0"):
        raise RaysplitError(
            f"{problem}: Ray's GCS always uses Redis database 0 and cannot select"
            f" {parts.path.lstrip('/')!r}; clusters sharing a Redis are kept apart by key"
            " namespace (raysplit uses one per RAYSPLIT_HOME)"
        )
    if parts.query or parts.fragment:
        raise RaysplitError(f"{problem}: Ray's GCS takes no options after the address")
    return GcsRedis(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        tls=parts.scheme == "rediss",
        namespace=namespace,
    )


class ClusterInfo(BaseModel):
    """What `up` started, kept in RAYSPLIT_HOME/cluster.json for `down` and `info`."""

    address: str
    dashboard_url: str
    metrics_export_port: int
    temp_dir: Path
    fast_path: bool
    gcs_redis: GcsRedis | None = None  # GCS fault tolerance on, with its state there
    haproxy_metrics_port: int | None = None  # on the fast path only
    haproxy_stats_port: int | None = None


def _ray_bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def temp_dir_for(home: Path) -> Path:
    """A short, per-home Ray temp dir.

    Short because HAProxy refuses socket paths over 97 bytes and Ray nests its HAProxy
    files 57 bytes deeper than the directory it is given (``haproxy/`` under this one).
    """
    configured = os.environ.get("RAYSPLIT_RAY_TEMP_DIR")
    path = (
        Path(configured)
        if configured
        else Path("/tmp") / f"rs-{hashlib.sha1(str(home).encode()).hexdigest()[:8]}"
    )
    if len(str(path)) > MAX_TEMP_DIR:
        raise RaysplitError(
            f"Ray temp dir {path} is longer than {MAX_TEMP_DIR} characters; HAProxy's socket"
            " paths under it would be too long (set a shorter RAYSPLIT_RAY_TEMP_DIR)"
        )
    return path


def serving_environment(locations: Locations, temp_dir: Path, fast_path: bool) -> dict[str, str]:
    """Variables the head (and so every replica it starts) must have."""
    env = {
        "RAYSPLIT_HOME": str(locations.home),
        "MLFLOW_TRACKING_URI": locations.mlflow_tracking_uri,
        "MLFLOW_REGISTRY_URI": locations.mlflow_registry_uri,
        "RAYSPLIT_EVENT_STORE_URL": locations.event_store_url,
        "RAY_AUTH_MODE": "token",
        CLUSTER_MARKER: str(temp_dir),  # inherited by every process of this cluster
    }
    if fast_path:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        haproxy = temp_dir / "haproxy"
        env.update({var: str(haproxy / name) for var, name in HAPROXY_FILES.items()})
        block = serve_ports(locations.home)
        # the operator's own ports win: the replica ranges and fallbacks as a whole (a range
        # from the block beside the operator's fallback port could overlap it), each of
        # HAProxy's listeners on its own
        ranges = REPLICA_PORT_VARS + FALLBACK_PORT_VARS
        if not any(var in os.environ for var in ranges):
            env.update({var: block[var] for var in ranges})
        env.update({var: block[var] for var in HAPROXY_PORT_VARS if var not in os.environ})
    return env


def _block_free(first: int, size: int) -> bool:
    for port in range(first, first + size):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                return False
    return True


def serve_ports(home: Path) -> dict[str, str]:
    """Serve's fast-path ports for this cluster, a block of its own.

    HAProxy reaches each replica on a port Serve hands out from one fixed range
    (30000-31000 for HTTP) per cluster, and falls back to Serve's proxy on one fixed port
    (8500, gRPC 9500) while an application has no ready replica (a rolling upgrade). So
    two clusters on one host share them: a port one cluster's replica freed is taken by
    the other's while the first cluster's HAProxy still routes to it, and the second
    cluster's fallback is the first one's proxy; either way its clients get answers (and
    events) from the wrong cluster (the test suite, two clusters at once, saw 231 of one
    upgrade test's requests logged by the other cluster's experiment). HAProxy's metrics
    and stats listeners also bind fixed defaults (9101, 8404), which a second cluster's
    HAProxy cannot bind. Each data directory gets a block in 20000-29999 (below the
    ephemeral ports, above Ray's worker ports 10002-19999), chosen from its path and moved
    past any block with a port already bound: the replicas' HTTP and gRPC ranges, each
    followed by its fallback proxy's port and one of HAProxy's (metrics, then stats).
    """
    start = int(hashlib.sha1(str(home).encode()).hexdigest(), 16) % REPLICA_PORT_BLOCKS
    for step in range(REPLICA_PORT_BLOCKS):
        first = REPLICA_PORT_BASE + ((start + step) % REPLICA_PORT_BLOCKS) * 2 * REPLICA_PORTS
        if _block_free(first, 2 * REPLICA_PORTS):
            break
    halves = (first, first + REPLICA_PORTS)  # HTTP, gRPC
    last = REPLICA_PORTS - 3  # a range's last replica port; then the fallback's, HAProxy's
    ranges = [port for base in halves for port in (base, base + last)]
    ports = [*ranges, *(base + last + 1 for base in halves), *(base + last + 2 for base in halves)]
    return dict(zip(SERVE_PORT_VARS, map(str, ports), strict=True))


def ensure_token() -> None:
    """Create Ray's auth token once; `ray start` and the CLI then both use it.

    Ray writes it world-readable; it is a credential, so only its owner may read it.
    """
    if not TOKEN_PATH.exists():
        subprocess.run(
            [_ray_bin("ray"), "get-auth-token", "--generate"], check=True, capture_output=True
        )
    TOKEN_PATH.chmod(0o600)


def _state_path(locations: Locations) -> Path:
    return locations.home / STATE_FILE


def read_state(locations: Locations) -> ClusterInfo | None:
    path = _state_path(locations)
    return ClusterInfo.model_validate_json(path.read_text()) if path.exists() else None


def running_address(locations: Locations) -> str | None:
    """The address of the cluster `up` started for this data directory, if it still runs
    (a cluster.json whose processes are gone, say after a reboot, is no cluster)."""
    info = read_state(locations)
    return info.address if info is not None and cluster_processes(info.temp_dir) else None


def dashboard_url(locations: Locations) -> str:
    """The dashboard the CLI talks to: ``RAYSPLIT_DASHBOARD_URL`` when set, else the one of
    the cluster `up` started for this data directory (its port may not be the default:
    ``raysplit up --dashboard-port``), else the default port."""
    if "RAYSPLIT_DASHBOARD_URL" in os.environ:
        return locations.ray_dashboard_url
    info = read_state(locations)
    if info is not None and cluster_processes(info.temp_dir):
        return info.dashboard_url
    return locations.ray_dashboard_url


def up(
    locations: Locations,
    ray_port: int,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    metrics_port: int = DEFAULT_METRICS_EXPORT_PORT,
    num_cpus: int | None = None,
    node_ip: str = "127.0.0.1",
    fast_path: bool = True,
    gcs_redis: str | None = None,
    dashboard_agent_port: int | None = None,
) -> ClusterInfo:
    """Start the head; refuse if this data directory already has one running.

    ``gcs_redis``: a Redis URL that turns on Ray's GCS fault tolerance (the GCS writes its
    tables there, under this home's namespace, and a restarted gcs_server reloads them).
    ``dashboard_agent_port``: where the head's agent listens; by default
    :func:`agent_port`, which cannot tell two heads starting at the same moment apart.
    """
    redis = parse_gcs_redis(gcs_redis, gcs_namespace(locations.home)) if gcs_redis else None
    existing = read_state(locations)
    if existing and cluster_processes(existing.temp_dir):
        raise RaysplitError(
            f"a raysplit cluster is already running at {existing.address}; `raysplit down` first"
        )
    temp_dir = temp_dir_for(locations.home)
    locations.home.mkdir(parents=True, exist_ok=True)
    (temp_dir / "haproxy").mkdir(parents=True, exist_ok=True)
    ensure_token()
    command = [
        _ray_bin("ray"),
        "start",
        "--head",
        f"--port={ray_port}",
        f"--node-ip-address={node_ip}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={metrics_port}",
        f"--dashboard-agent-listen-port={dashboard_agent_port or agent_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        command.append(f"--num-cpus={num_cpus}")
    env = {**os.environ, **serving_environment(locations, temp_dir, fast_path)}
    if redis is not None:
        env["RAY_REDIS_ADDRESS"] = redis.address
        env["RAY_external_storage_namespace"] = redis.namespace
        if redis.username:
            command.append(f"--redis-username={redis.username}")
        if redis.password:  # Ray passes it on to gcs_server's command line as well
            command.append(f"--redis-password={redis.password}")
    # a Ray job's entrypoint (`python -m tune.retrain`) must find the Python raysplit is
    # installed in, even when the user's shell never activated its virtual environment
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # started from the data directory, not the caller's: Ray puts that directory first on
    # every worker's sys.path, where a checkout's serve_app would shadow the installed
    # package (and the one a deploy ships in its runtime_env)
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=locations.home)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RaysplitError(f"ray start failed: {tail}")
    info = ClusterInfo(
        address=f"{node_ip}:{ray_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_export_port=metrics_port,
        temp_dir=temp_dir,
        fast_path=fast_path,
        gcs_redis=redis,
        haproxy_metrics_port=int(env[HAPROXY_PORT_VARS[0]]) if fast_path else None,
        haproxy_stats_port=int(env[HAPROXY_PORT_VARS[1]]) if fast_path else None,
    )
    state = _state_path(locations)
    state.touch(mode=0o600)  # it may hold the Redis password `down` needs
    state.chmod(0o600)
    state.write_text(info.model_dump_json(indent=2))
    write_prometheus_config(locations.prometheus_config, temp_dir)
    return info


def agent_port() -> int:
    """Ray's dashboard agent port (52365) if it is free, else one the system picks.

    The job API (``raysplit retrain``) goes through the head's agent. Every head on a
    machine asks for 52365 by default; the second one's agent fails to bind and its job
    API answers "No available agent to submit job" for as long as it runs.
    """
    for port in (DEFAULT_AGENT_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RaysplitError("no free port for Ray's dashboard agent")


def cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """This cluster's processes, and no one else's.

    Ray's daemons name the temp dir on their command line; agents rename themselves
    (``ray::DashboardAgent``) but inherit the ``RAYSPLIT_CLUSTER`` marker `up` sets, and
    every worker descends from a daemon.
    """
    marker = str(temp_dir).rstrip("/") + "/"
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        named = any(marker in part or part.endswith(str(temp_dir)) for part in cmdline)
        try:
            tagged = process.environ().get(CLUSTER_MARKER) == str(temp_dir)
            if named or tagged:
                found[process.pid] = process
                found.update((c.pid, c) for c in process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def down(locations: Locations, timeout: float = 20.0) -> int:
    """Stop the processes of the cluster `up` started for this data directory; return how
    many there were (0: none was running, which is not an error, so `down` is safe to repeat).

    The temp dir follows from the data directory, so this works even if cluster.json is gone.
    """
    info = read_state(locations)
    temp_dir = info.temp_dir if info else temp_dir_for(locations.home)
    processes = cluster_processes(temp_dir)
    if processes:
        _stop(temp_dir, processes, timeout)
    if info and info.gcs_redis:
        forget_gcs_state(info.gcs_redis)
    _state_path(locations).unlink(missing_ok=True)
    return len(processes)


def forget_gcs_state(redis: GcsRedis) -> None:
    """Delete the stopped cluster's GCS tables from Redis, as KubeRay's cleanup job does
    when a RayCluster is deleted: the next `up` for this home starts a fresh cluster
    instead of restoring the actors of one that was stopped on purpose."""
    from ray._private.gcs_utils import cleanup_redis_storage

    try:
        cleanup_redis_storage(
            redis.host, redis.port, redis.password, redis.tls, redis.namespace, redis.username
        )
    except Exception as exc:  # Ray raises RuntimeError, or whatever its Redis client met
        raise RaysplitError(
            f"the cluster is stopped, but its GCS state (namespace {redis.namespace}) in"
            f" Redis at {redis.shown()} could not be deleted: {exc}; run `raysplit down`"
            " again once Redis answers"
        ) from exc


def _stop(temp_dir: Path, processes: list[psutil.Process], timeout: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    deadline = time.monotonic() + timeout
    while (left := cluster_processes(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        names = ", ".join(f"{p.pid}" for p in left)
        raise RaysplitError(f"{len(left)} Ray processes of this cluster survived: pids {names}")
