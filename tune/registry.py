"""The MLflow Model Registry contract the serving side relies on.

A search registers its best model as a new version, tagged with where it came from, and
points an alias at it. Alias moves, and their history that lets a rollback return an
alias to its previous holder, are :mod:`raysplit.core.registry`'s: serving moves aliases
too (a rollout's promotion) and may not import training.
"""

from __future__ import annotations

import re

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysplit.core.registry import move_alias


def register_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: dict[str, str],
    alias: str | None,
    model_id: str | None = None,
) -> ModelVersion:
    """Create a version with its tags and alias (none: the version alone), or nothing at
    all if any step fails.

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
        if alias is not None:
            move_alias(client, name, alias, version.version)
        return client.get_model_version(name, version.version)
    except Exception:
        if version is not None:
            client.delete_model_version(name, version.version)
        if created_model:
            client.delete_registered_model(name)
        raise
