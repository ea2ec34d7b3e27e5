"""The delivery files, checked where no Docker engine or Kubernetes runs: the Dockerfile by
hadolint, the compose stack, KubeRay manifest and GitHub workflow parsed and cross-checked
against the app's own config."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = yaml.safe_load((REPO / "serve_config.yaml").read_text())
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(stages) == 2 and "AS build" in text  # build tools stay in the first stage
    final = text.split("\nFROM ")[-1]
    assert re.search(r"^USER 1000:1000$", final, re.MULTILINE)
    assert "HEALTHCHECK" in final and "/readyz" in final
    assert "org.opencontainers.image.version" in final
    for copied in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, re.MULTILINE):
        assert (REPO / copied).exists(), f"Dockerfile copies missing {copied}"
    entrypoint = REPO / "deploy" / "docker" / "entrypoint.sh"
    assert entrypoint.stat().st_mode & 0o111, "entrypoint must be executable"


def test_every_file_compose_mounts_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


def test_compose_ports_and_env_match_the_app() -> None:
    serve_port = SERVE_CONFIG["http_options"]["port"]
    head = SERVICES["ray-head"]
    assert f"{serve_port}:{serve_port}" in head["ports"]
    assert "8265:8265" in head["ports"]
    env = {**head["environment"]}
    mlflow_port = next(
        int(a.split("=")[1]) for a in SERVICES["mlflow"]["command"] if a.startswith("--port")
    )
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    assert "@postgres:5432/events" in env["RAYSPLIT_EVENT_STORE_URL"]
    init = (REPO / "deploy" / "compose" / "postgres-init.sql").read_text()
    assert "CREATE DATABASE events" in init
    worker = SERVICES["ray-worker"]["environment"]
    assert worker["RAY_HEAD_ADDRESS"] == "ray-head:6380"
    # Prometheus reads Ray's service discovery from the head's temp dir volume
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (discovery,) = prometheus["scrape_configs"][0]["file_sd_configs"]
    assert discovery["files"][0].startswith("/tmp/ray/")
    assert "ray-tmp:/tmp/ray:ro" in SERVICES["prometheus"]["volumes"]
    assert "ray-tmp:/tmp/ray" in head["volumes"]


def test_compose_waits_on_health_and_commits_no_secret() -> None:
    for name, service in SERVICES.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES
            assert condition["condition"] in {"service_healthy", "service_started"}
    text = (REPO / "docker-compose.yml").read_text()
    for secret in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\${{{secret}:\?", text), f"{secret} must come from .env"
    assert not re.search(r"password\s*[:=]\s*(?!\$)\w", text, re.IGNORECASE)
    example = (REPO / "deploy" / "compose" / "stack.env.example").read_text()
    assert "RAY_AUTH_TOKEN=change-me" in example
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def _generator():
    path = REPO / "deploy" / "kuberay" / "generate.py"
    spec = importlib.util.spec_from_file_location("kuberay_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rayservice_is_generated_from_serve_config() -> None:
    generate = _generator()
    shipped = (REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text()
    assert shipped == generate.render(), "run: python deploy/kuberay/generate.py"
    manifest = yaml.safe_load(shipped)
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve["applications"] == SERVE_CONFIG["applications"]
    assert serve["http_options"]["port"] == SERVE_CONFIG["http_options"]["port"]


def test_rayservice_structure() -> None:
    manifest = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"].startswith("2.60")
    assert cluster["enableInTreeAutoscaling"] is True
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env["RAYSPLIT_EVENT_STORE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "raysplit"
        assert "MLFLOW_TRACKING_URI" in env
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]


WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def check_workflow(path: Path) -> subprocess.CompletedProcess:
    """GitHub's workflow schema (as vendored by check-jsonschema) against ``path``."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    command = [str(checker), "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_github_workflow_is_valid_for_github(tmp_path: Path) -> None:
    result = check_workflow(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "ci.yml"  # and the check does refuse a workflow GitHub would reject
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "run-on:", 1))
    refused = check_workflow(broken)
    assert refused.returncode == 1 and "'runs-on' is a required property" in refused.stdout
    for job, spec in yaml.safe_load(WORKFLOW.read_text())["jobs"].items():
        for step in spec["steps"]:
            if "run" in step:  # every shell step parses as bash (GitHub's default shell)
                parsed = subprocess.run(["bash", "-n", "-c", step["run"]], capture_output=True)
                assert parsed.returncode == 0, f"{job}: {step['run']!r}: {parsed.stderr!r}"


def test_github_workflow_runs_the_suite_and_ships_the_image() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    runs = {name: [s["run"] for s in job["steps"] if "run" in s] for name, job in jobs.items()}
    uses = {
        name: {s["uses"].split("@")[0]: s for s in job["steps"] if "uses" in s}
        for name, job in jobs.items()
    }
    assert runs["test"][-1].split()[-2:] == ["make", "test"]  # the last step runs the suite
    postgres = jobs["test"]["services"]["postgres"]
    assert postgres["image"].startswith("postgres:") and postgres["ports"] == ["5432:5432"]
    assert jobs["test"]["env"]["RAYSPLIT_TEST_POSTGRES"] == "postgresql://postgres@127.0.0.1:5432"
    assert {"ruff check .", "ruff format --check ."} <= set(runs["lint"])
    assert any(r.endswith("&& hadolint Dockerfile") for r in runs["lint"])
    built = uses["image"]["docker/build-push-action"]["with"]
    scan = uses["image"]["aquasecurity/trivy-action"]["with"]
    assert built["load"] is True and scan["image-ref"] == built["tags"]  # scans what it built
    assert str(scan["exit-code"]) == "1"  # a finding fails the job
    assert jobs["image"]["needs"] == "lint"
    smoke = next(r for r in runs["image"] if "docker compose up" in r)
    assert "docker compose up -d --wait" in smoke and "curl -fsS -X POST" in smoke
    assert "make test" in (REPO / ".ci" / "run").read_text()
