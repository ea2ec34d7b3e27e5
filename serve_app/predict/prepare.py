"""A ``user_config`` turned into what a replica serves: validated, every variant resolved
and loaded, the variants checked against each other.

One path for the replica's ``reconfigure()`` (:mod:`serve_app.app`) and for ``raysplit
check`` / ``raysplit deploy``, so the command refuses exactly what a replica would refuse,
by the same code. Every problem is collected, each with the field it is about, rather
than the first alone: an operator fixing a config wants the whole list at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ValidationError

from serve_app.config.ingress import IngressConfig
from serve_app.predict.models import LoadedModel, ModelLoadError, load, resolve
from serve_app.predict.state import IncompatibleVariants, ServingState

FIELD_ROOT = "user_config"


class Problem(BaseModel):
    """One reason a config is refused, and the field it is about."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigRefused(ValueError):
    """A ``user_config`` no replica can serve; ``problems`` says why, field by field."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def config_hash(user_config: Mapping[str, Any]) -> str:
    """A short, stable name for a ``user_config``: the same mapping whatever its key order,
    so an operator can tell the config a replica serves from the one it refused."""
    canonical = orjson.dumps(user_config, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:12]


# The checks across fields (IngressConfig._consistent) carry no location in pydantic's
# report; each message begins with what it is about, which names the field.
CROSS_FIELD_SUBJECTS = (
    ("rollout", "rollout"),
    ("control", "control"),
    ("variant", "variants"),
    ("live variant", "variants"),
    ("at least one variant", "variants"),
)


def _field(location: tuple[Any, ...], message: str) -> str:
    path = [str(p) for p in location if p != "__root__"]
    if not path:
        path = [f for subject, f in CROSS_FIELD_SUBJECTS if message.startswith(subject)][:1]
    return ".".join([FIELD_ROOT, *path])


def validate(user_config: Mapping[str, Any]) -> IngressConfig:
    """The config as pydantic reads it, or every invalid field."""
    try:
        return IngressConfig.model_validate(user_config)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            problems.append(Problem(field=_field(error["loc"], message), message=message))
        raise ConfigRefused(problems) from None


def load_variants(
    config: IngressConfig,
    client: MlflowClient,
    loaded: Mapping[str, LoadedModel] | None = None,
) -> dict[str, LoadedModel]:
    """Resolve and load each variant; a model already loaded at the same pinned version
    (``loaded``, by resolved URI) is reused rather than loaded again."""
    loaded = loaded or {}
    models: dict[str, LoadedModel] = {}
    problems = []
    for index, variant in enumerate(config.variants):
        try:
            pinned = resolve(variant.model_uri, client)  # one registry call per variant
            model = loaded.get(pinned.uri)
            if model is None or (model.pickled and not config.allow_pickle):
                model = load(variant, pinned, config.allow_pickle)
            models[variant.name] = model
        except ModelLoadError as exc:
            problems.append(
                Problem(field=f"{FIELD_ROOT}.variants.{index}.model_uri", message=str(exc))
            )
    if problems:
        raise ConfigRefused(problems)
    return models


def prepare(
    user_config: Mapping[str, Any],
    client: MlflowClient,
    loaded: Mapping[str, LoadedModel] | None = None,
) -> tuple[IngressConfig, dict[str, LoadedModel]]:
    """Everything a replica needs to serve ``user_config``, or :class:`ConfigRefused`.

    The variants are checked against each other here (same features, same kind of model)
    without a rollout: a rollout only moves weights, never which models serve."""
    config = validate(user_config)
    models = load_variants(config, client, loaded)
    try:
        ServingState.build(config, models)
    except IncompatibleVariants as exc:
        raise ConfigRefused([Problem(field=f"{FIELD_ROOT}.variants", message=str(exc))]) from None
    return config, models
