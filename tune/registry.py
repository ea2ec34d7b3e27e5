"""The MLflow Model Registry contract the serving side relies on.

A search registers its best model as a new version, tagged with where it came from, and
points an alias at it. Alias moves are recorded in a registered-model tag so a rollback
can return an alias to its previous holder.
"""

from __future__ import annotations

import re

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from raysplit.core.errors import RaysplitError

HISTORY_TAG = "raysplit.alias_history.{alias}"


def _history(client: MlflowClient, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    raw = tags.get(HISTORY_TAG.format(alias=alias), "")
    return [v for v in raw.split(",") if v]


def _save_history(client: MlflowClient, name: str, alias: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), ",".join(history))


def _require_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise RaysplitError(f"registered model '{name}' does not exist") from exc


def _require_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    _require_model(client, name)
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise RaysplitError(f"registered model '{name}' has no version {version}") from exc


def current_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except (MlflowException, RestException):
        return None


def move_alias(client: MlflowClient, name: str, alias: str, version: str) -> str | None:
    """Point ``alias`` at ``version``; return the version it pointed at before, if any."""
    _require_version(client, name, version)
    previous = current_holder(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    history = _history(client, name, alias)
    if not history or history[-1] != str(version):
        history.append(str(version))
    _save_history(client, name, alias, history)
    return previous


def rollback_alias(client: MlflowClient, name: str, alias: str) -> tuple[str | None, str]:
    """Move ``alias`` back to the version that held it before; return ``(from, to)``."""
    _require_model(client, name)
    history = _history(client, name, alias)
    if len(history) < 2:
        raise RaysplitError(f"alias '{alias}' of '{name}' has no earlier version to roll back to")
    current = current_holder(client, name, alias)
    client.set_registered_model_alias(name, alias, history[-2])
    _save_history(client, name, alias, history[:-1])
    return current, history[-2]


def register_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    alias: str,
    model_id: str | None = None,
) -> ModelVersion:
    """Create a version with its tags and alias, or nothing at all if any step fails.

    A tracking server insists on the logged model's id alongside a ``models:/m-...``
    source; it is taken from the URI when not given.
    """
    if model_id is None and re.fullmatch(r"models:/m-[0-9a-f]+", model_uri):
        model_id = model_uri.removeprefix("models:/")
    created_model = False
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Registered by raysplit tune")
        created_model = True
    version = None
    try:
        version = client.create_model_version(
            name, model_uri, run_id=run_id, tags=tags, model_id=model_id
        )
        move_alias(client, name, alias, version.version)
        return client.get_model_version(name, version.version)
    except Exception:
        if version is not None:
            client.delete_model_version(name, version.version)
        if created_model:
            client.delete_registered_model(name)
        raise
