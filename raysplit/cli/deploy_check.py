"""``raysplit check``, ``raysplit deploy`` and ``raysplit status``: a serve config checked
against the live registry before Serve sees it, and what the replicas did with the last one.

The check runs :func:`serve_app.predict.prepare.prepare`, the code a replica's ``reconfigure()``
runs, in this process: the same validation, the same registry calls, the same model
loading and the same comparison of variants, so what it accepts a replica accepts. A
replica refuses what it cannot serve and keeps serving the config it had (see
:mod:`serve_app.predict.deploy_status`), so ``serve deploy`` stays safe; ``raysplit deploy`` only
says no before anything is sent.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from raysplit.core.errors import RaysplitError
from raysplit.core.settings import Locations

INGRESS_IMPORT = "serve_app.app:app"
INGRESS_DEPLOYMENT = "Ingress"


class Finding(BaseModel):
    """One problem (refuses the deploy) or warning (does not) about a serve config."""

    application: str
    deployment: str
    field: str
    message: str
    warning: bool = False

    def line(self) -> str:
        kind = "warning" if self.warning else "error"
        return f"{kind}: {self.application} / {self.deployment} / {self.field}: {self.message}"


def read_serve_config(path: Path) -> dict[str, Any]:
    """The file as Serve's own schema reads it (``ray.serve.schema.ServeDeploySchema``)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RaysplitError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("applications"), list):
        raise RaysplitError(f"{path}: not a serve config (no `applications:` list)")
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError
        first = str(exc).splitlines()
        raise RaysplitError(f"{path}: Serve refuses it: {' '.join(first[:3])}") from exc
    return raw


def ingresses(config: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(application name, its Ingress deployment) for every raysplit application."""
    for app in config["applications"]:
        if app.get("import_path") != INGRESS_IMPORT:
            continue
        for deployment in app.get("deployments", []):
            if deployment.get("name") == INGRESS_DEPLOYMENT:
                yield app["name"], deployment
                break
        else:
            yield app["name"], {"name": INGRESS_DEPLOYMENT}


TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def _tracking(env_vars: Mapping[str, str], locations: Locations) -> Iterator[Any]:
    """An MLflow client for the registry a replica of this application would use: the
    application's runtime_env, else this machine's locations (what `raysplit up` gives
    replicas), resolved once before any application's were applied.

    MLflow's module-level URIs are set for the model downloads and then put back as they
    were, environment included: MLflow writes them to ``os.environ``, and restoring its
    default instead would point the next application at ``./mlflow.db``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking = env_vars.get("MLFLOW_TRACKING_URI") or locations.mlflow_tracking_uri
    registry = (
        env_vars.get("MLFLOW_REGISTRY_URI")
        or (env_vars.get("MLFLOW_TRACKING_URI") and tracking)
        or locations.mlflow_registry_uri
    )
    saved = {name: os.environ.get(name) for name in TRACKING_ENV}
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    try:
        yield MlflowClient(tracking, registry)
    finally:
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or locations.mlflow_tracking_uri)
        mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"] or locations.mlflow_registry_uri)
        for name, value in saved.items():  # set_*_uri wrote them to the environment
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_application(
    name: str, deployment: Mapping[str, Any], app: Mapping[str, Any], locations: Locations
) -> list[Finding]:
    """Every reason a replica of this application would refuse its ``user_config``."""
    from serve_app.predict.prepare import ConfigRefused, prepare

    user_config = deployment.get("user_config")
    if user_config is None:
        return [
            Finding(
                application=name,
                deployment=INGRESS_DEPLOYMENT,
                field="user_config",
                message="missing: the ingress has no experiment to serve without it",
            )
        ]
    env_vars = {
        **(app.get("runtime_env") or {}).get("env_vars", {}),
        **((deployment.get("ray_actor_options") or {}).get("runtime_env") or {}).get(
            "env_vars", {}
        ),
    }
    with _tracking(env_vars, locations) as client:
        try:
            prepare(user_config, client)
        except ConfigRefused as exc:
            return [
                Finding(
                    application=name,
                    deployment=INGRESS_DEPLOYMENT,
                    field=p.field,
                    message=p.message,
                )
                for p in exc.problems
            ]
    return []


def replica_cpus(config: Mapping[str, Any]) -> float:
    """CPUs the config's deployments hold at their maximum replica counts (Serve's
    defaults: one replica, one CPU each)."""
    total = 0.0
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            autoscaling = deployment.get("autoscaling_config") or {}
            replicas = autoscaling.get("max_replicas", deployment.get("num_replicas", 1))
            if not isinstance(replicas, int | float):
                replicas = 1
            cpus = (deployment.get("ray_actor_options") or {}).get("num_cpus", 1)
            total += replicas * cpus
    return total


def cluster_cpus(dashboard_url: str) -> float | None:
    """The CPUs of the cluster's live nodes, or None if the dashboard cannot say."""
    try:
        from ray.util.state import list_nodes

        nodes = list_nodes(address=dashboard_url, detail=True, raise_on_missing_output=False)
    except Exception:
        return None
    return float(sum((n.resources_total or {}).get("CPU", 0) for n in nodes if n.state == "ALIVE"))


def capacity_warning(config: Mapping[str, Any], cpus: float | None) -> Finding | None:
    """Warn when the replica maxima cannot all be scheduled: the autoscaler then waits on a
    replica that never starts, and a later deploy waits on it too (seen on 2 cores with
    iris at 4 x 0.5 CPU: DEPLOYING for over 10 minutes after load had stopped)."""
    wanted = replica_cpus(config)
    if cpus is None or wanted <= cpus + 1e-9:
        return None
    return Finding(
        application="*",
        deployment="*",
        field="max_replicas x ray_actor_options.num_cpus",
        message=f"the deployments ask for up to {wanted:g} CPUs at their maximum replica"
        f" counts; the cluster has {cpus:g}: lower max_replicas or num_cpus, or add nodes",
        warning=True,
    )


def check(path: Path, dashboard_url: str | None = None) -> list[Finding]:
    """Every finding about the serve config at ``path``; errors first."""
    config = read_serve_config(path)
    findings: list[Finding] = []
    apps = {a["name"]: a for a in config["applications"]}
    locations = Locations.resolve()  # before any application's runtime_env is applied
    for name, deployment in ingresses(config):
        findings.extend(check_application(name, deployment, apps[name], locations))
    cpus = cluster_cpus(dashboard_url) if dashboard_url else None
    if cpus is None:
        findings.append(
            Finding(
                application="*",
                deployment="*",
                field="max_replicas x ray_actor_options.num_cpus",
                message=f"not checked: no Ray dashboard answered at {dashboard_url} to say"
                " how many CPUs the cluster has",
                warning=True,
            )
        )
    elif (warning := capacity_warning(config, cpus)) is not None:
        findings.append(warning)
    return findings


def dashboard_headers() -> dict[str, str]:
    from raysplit.cli.cluster import TOKEN_PATH

    if TOKEN_PATH.exists():
        return {"Authorization": f"Bearer {TOKEN_PATH.read_text().strip()}"}
    return {}


def deploy(path: Path, dashboard_url: str) -> None:
    """PUT the config to the dashboard, the request `serve deploy` sends."""
    import requests

    config = read_serve_config(path)
    try:
        response = requests.put(
            f"{dashboard_url}/api/serve/applications/",
            json=config,
            headers=dashboard_headers(),
            timeout=120,
        )
    except requests.RequestException as exc:
        raise RaysplitError(
            f"cannot reach the Ray dashboard at {dashboard_url}: {type(exc).__name__}"
        ) from exc
    if not response.ok:
        raise RaysplitError(f"the dashboard refused the config: {response.text[:500]}")


def status_lines(dashboard_url: str, ingress_url: str, headers: dict[str, str]) -> list[str]:
    """One line per application: Serve's status, and for raysplit's ingress what its
    replica did with the last config (APPLIED, or REFUSED and what it serves instead)."""
    import requests

    from serve_app.predict.deploy_status import DeployStatus

    try:
        response = requests.get(
            f"{dashboard_url}/api/serve/applications/", headers=dashboard_headers(), timeout=30
        )
        response.raise_for_status()
    except requests.RequestException as exc:
        raise RaysplitError(
            f"cannot read Serve's applications from {dashboard_url}: {exc}"
        ) from exc
    lines = []
    for name, app in sorted((response.json().get("applications") or {}).items()):
        serve = f"Serve {app.get('status')}"
        prefix = (app.get("route_prefix") or "/").rstrip("/")
        try:
            models = requests.get(f"{ingress_url}{prefix}/models", headers=headers, timeout=15)
            deploy = models.json().get("deploy") if models.ok else None
        except (requests.RequestException, ValueError):
            deploy = None
        if isinstance(deploy, dict) and "serving_config_hash" in deploy:
            lines.append(f"{DeployStatus.model_validate(deploy).line(name)} ({serve})")
        else:
            message = app.get("message") or ""
            lines.append(f"{name}: {serve}{': ' + message if message else ''}")
    return lines
