"""Where raysplit keeps and finds things: one data directory and the URIs derived from it.

Every location is absolute, because Ray workers and Serve replicas do not run in the
caller's working directory, and Tune runs each trial in a directory of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

DEFAULT_RAY_PORT = 6380  # 6379 is often a Redis server's
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_INGRESS_PORT = 8000
DEFAULT_METRICS_EXPORT_PORT = 8085


def _checkout_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one (editable install)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def raysplit_home() -> Path:
    """``RAYSPLIT_HOME``, else ``.raysplit/`` in the checkout, else in the working directory."""
    configured = os.environ.get("RAYSPLIT_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    return (_checkout_root() or Path.cwd()) / ".raysplit"


class Locations(BaseModel):
    """The resolved locations ``raysplit info`` prints and every command uses."""

    home: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str
    mlflow_artifact_root: str | None
    mlflow_embedded: bool
    event_store_url: str
    lake_uri: str  # raw events as Parquet (docs/event_lake.md): a pyarrow URI or a path
    retention: str | None  # how long raw events stay in the database (e.g. 30d); None: ever
    ray_address: str
    ray_dashboard_url: str
    ingress_url: str
    metrics_endpoints: list[str]
    prometheus_config: Path
    tune_storage_path: Path

    @classmethod
    def resolve(cls) -> Locations:
        """Read the environment; fall back to embedded SQLite stores under the data directory."""
        env = os.environ
        home = raysplit_home()
        tracking = env.get("MLFLOW_TRACKING_URI")
        embedded = not tracking
        if embedded:
            tracking = f"sqlite:///{home / 'mlflow.db'}"
        ray_port = int(env.get("RAYSPLIT_RAY_PORT", DEFAULT_RAY_PORT))
        metrics_port = int(env.get("RAYSPLIT_METRICS_EXPORT_PORT", DEFAULT_METRICS_EXPORT_PORT))
        return cls(
            home=home,
            mlflow_tracking_uri=tracking,
            mlflow_registry_uri=env.get("MLFLOW_REGISTRY_URI", tracking),
            mlflow_artifact_root=(home / "mlartifacts").as_uri() if embedded else None,
            mlflow_embedded=embedded,
            event_store_url=env.get("RAYSPLIT_EVENT_STORE_URL", f"sqlite:///{home / 'events.db'}"),
            lake_uri=env.get("RAYSPLIT_LAKE_URI", str(home / "lake")),
            retention=env.get("RAYSPLIT_RETENTION") or None,
            ray_address=env.get("RAY_ADDRESS", f"127.0.0.1:{ray_port}"),
            ray_dashboard_url=env.get(
                "RAYSPLIT_DASHBOARD_URL", f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}"
            ),
            ingress_url=env.get("RAYSPLIT_INGRESS_URL", f"http://127.0.0.1:{DEFAULT_INGRESS_PORT}"),
            metrics_endpoints=[f"http://127.0.0.1:{metrics_port}/metrics"],
            prometheus_config=home / "prometheus" / "prometheus.yml",
            tune_storage_path=home / "ray_results",
        )
