"""Retraining runs as a Ray job on the serving cluster, through Ray's Job Submission API.

A job rather than a task or an actor started by the ingress: it has its own driver, so a
search that runs for minutes holds no replica, and it shows in the Ray dashboard's Jobs
tab with its logs, which is where an operator looks when a retrain fails. Both the CLI
(``raysplit retrain``) and the ingress (``POST /retrain``) submit through here, so they
refuse the same things with the same words.

What the job does is :mod:`tune.retrain`'s; this module only knows its entrypoint, how its
spec travels (an environment variable of the job's runtime env: no shell quoting, and it
shows in the dashboard) and how it reports back: the last line its driver prints starting
with :data:`OUTCOME_PREFIX` (or :data:`ERROR_PREFIX`) is its result.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from raysplit.core.errors import RaysplitError

ENTRYPOINT = "python -m tune.retrain"
SPEC_ENV = "RAYSPLIT_RETRAIN_SPEC"
OUTCOME_PREFIX = "raysplit-retrain-outcome: "
ERROR_PREFIX = "raysplit-retrain-error: "
KIND_KEY, MODEL_KEY = "raysplit.kind", "raysplit.model"
ACTIVE = ("PENDING", "RUNNING")
# Ray's job API answers this (HTTP 500) until the head's job agent has registered
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_ATTEMPTS = 15


class RetrainConflict(RaysplitError):
    """A retrain of the same model is already running (HTTP 409)."""


class RetrainNotFound(RaysplitError):
    """No retrain job has this id (HTTP 404)."""


class RetrainJob(BaseModel):
    """A retrain job as ``GET /retrain/{job_id}`` and ``raysplit retrain --status`` show it."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    model: str
    status: str  # Ray's: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str | None = None
    started_at: float | None = None  # seconds since the epoch
    ended_at: float | None = None
    outcome: dict[str, Any] | None = None  # tune.retrain's RetrainOutcome, once it ended
    error: str | None = None  # the job's own one-line reason, when it failed


def model_name_of(spec: dict[str, Any]) -> str:
    """The registered model a retrain spec writes to: ``register.model_name``, required
    here (a retrain must name what it replaces, not fall back to a dataset's name)."""
    register = spec.get("register") or {}
    name = register.get("model_name") if isinstance(register, dict) else None
    if not isinstance(name, str) or not name:
        raise RaysplitError("retrain config: give register.model_name, the model to retrain")
    return name


def job_client(address: str | None = None) -> Any:
    """A Job Submission client for the cluster at ``address`` (its dashboard URL), or, with
    none, for the cluster this process runs in (Ray finds the dashboard through the GCS).

    Ray adds the cluster's token itself when ``RAY_AUTH_MODE=token`` (``raysplit up`` sets
    it for every process of the cluster). An unreachable or refusing dashboard is a
    :class:`RaysplitError` naming the address.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray.job_submission import JobSubmissionClient  # Ray reads RAY_AUTH_MODE at import

    if address is None and ray.is_initialized():
        # this process's own cluster by its GCS: Ray's auto-detection scans the machine
        # and refuses ("multiple active Ray instances") when another cluster runs beside
        address = ray.get_runtime_context().gcs_address
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, a 401 without the token...
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        where = address or "this cluster"
        raise RaysplitError(f"cannot reach Ray's job API at {where}: {first}") from exc


def active_retrain(client: Any, model: str) -> str | None:
    """The id of a retrain of ``model`` that is pending or running, if any."""
    for job in client.list_jobs():
        metadata = job.metadata or {}
        status = str(getattr(job.status, "value", job.status))
        ours = metadata.get(KIND_KEY) == "retrain" and metadata.get(MODEL_KEY) == model
        if ours and status in ACTIVE:
            return job.submission_id
    return None


def submit_retrain(
    client: Any,
    spec: dict[str, Any],
    entrypoint_num_cpus: float = 0.25,
    env: Mapping[str, str] | None = None,
) -> str:
    """Submit the search in ``spec`` (a tune config as a mapping) as a job; its id.

    ``env`` is laid over the cluster's environment for the job's driver and trials (for
    example MLflow's client settings, such as ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).

    Refused with :class:`RetrainConflict` while a retrain of the same model runs: two
    searches racing to move one alias would leave it to whichever ends last. (The check
    and the submission are two calls to Ray's job API, which has no compare-and-set: two
    submissions in the same instant can both pass.) The driver
    asks for a quarter CPU; the trials ask for their own (``search.cpus_per_trial``).
    """
    model = model_name_of(spec)
    running = active_retrain(client, model)
    if running is not None:
        raise RetrainConflict(
            f"a retrain of '{model}' is already running (job {running}); wait for it or"
            f" stop it with `ray job stop {running}`"
        )
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", model)[:40]
    submission_id = f"raysplit-retrain-{safe}-{uuid.uuid4().hex[:8]}"
    attempts = AGENT_WAIT_ATTEMPTS
    while True:
        try:
            return client.submit_job(
                entrypoint=ENTRYPOINT,
                submission_id=submission_id,
                runtime_env={"env_vars": {**(env or {}), SPEC_ENV: json.dumps(spec)}},
                metadata={KIND_KEY: "retrain", MODEL_KEY: model},
                entrypoint_num_cpus=entrypoint_num_cpus,
            )
        except RuntimeError as exc:
            # a head that just started has no job agent registered yet: Ray asks to retry
            attempts -= 1
            if NO_AGENT not in str(exc) or attempts == 0:
                raise
            time.sleep(2)


def last_marked(logs: str, prefix: str) -> str | None:
    """The text after ``prefix`` on the last log line that starts with it."""
    for line in reversed(logs.splitlines()):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def retrain_status(client: Any, job_id: str) -> RetrainJob:
    """The job's state and, once it ended, its outcome or its reason for failing."""
    try:
        info = client.get_job_info(job_id)
    except RuntimeError as exc:  # the SDK's "Request failed with status code 404"
        if "404" in str(exc) or "does not exist" in str(exc):
            raise RetrainNotFound(f"no job with id '{job_id}'") from exc
        raise
    metadata = info.metadata or {}
    if metadata.get(KIND_KEY) != "retrain":
        raise RetrainNotFound(f"job '{job_id}' is not a raysplit retrain")
    status = str(getattr(info.status, "value", info.status))
    outcome = error = None
    if status not in ACTIVE:
        logs = client.get_job_logs(job_id)
        raw = last_marked(logs, OUTCOME_PREFIX)
        outcome = json.loads(raw) if raw else None
        error = last_marked(logs, ERROR_PREFIX)
    return RetrainJob(
        job_id=job_id,
        model=metadata.get(MODEL_KEY, ""),
        status=status,
        message=info.message,
        started_at=info.start_time / 1000 if info.start_time else None,
        ended_at=info.end_time / 1000 if info.end_time else None,
        outcome=outcome,
        error=error,
    )
