"""Point the shipped Prometheus config at a local cluster started by `raysplit up`.

``deploy/prometheus/prometheus.yml`` names Ray's default temp dir, which is right in the
compose stack and on KubeRay; a local head runs under its own temp dir, so ``raysplit up``
writes a copy whose service-discovery file is that cluster's, with the alert rules beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICE_DISCOVERY_FILE = "prom_metrics_service_discovery.json"


def write_prometheus_config(target: Path, ray_temp_dir: Path) -> Path | None:
    """Write ``target`` (and the rules next to it); None when ``deploy/`` is not shipped."""
    template = DEPLOY / "prometheus" / "prometheus.yml"
    if not template.is_file():
        return None
    config = yaml.safe_load(template.read_text())
    for job in config["scrape_configs"]:
        for discovery in job.get("file_sd_configs", []):
            discovery["files"] = [str(ray_temp_dir / SERVICE_DISCOVERY_FILE)]
    target.parent.mkdir(parents=True, exist_ok=True)
    for rules in config.get("rule_files", []):
        shutil.copyfile(template.parent / rules, target.parent / rules)
    target.write_text(
        f"# Written by `raysplit up` from {template}; regenerated at every start.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return target
