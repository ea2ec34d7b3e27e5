"""Aliases in the MLflow Model Registry, with their history.

Both sides move aliases: training points one at the version a search registers, and
serving moves the control's alias to a candidate that won its rollout. So the history
lives here, in the foundation: every alias move is recorded in a registered-model tag,
so a rollback (``raysplit rollback``) can return an alias to its previous holder
whichever side moved it.
"""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from raysplit.core.errors import RaysplitError

HISTORY_TAG = "raysplit.alias_history.{alias}"
# on a candidate version a rollout rolled back, its value the reason: serving writes it, a
# retrain's gate reads it (a version that lost in live traffic is not a bar to clear)
ROLLED_BACK_TAG = "rolled_back"


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
