"""Reading a downloaded MLflow scikit-learn model without running code it brings along.

Serving loads every variant this way, and a retrain loads the incumbents it must beat the
same way: one rule for what is safe to load, so a model the ingress would refuse cannot
be unpickled by a retrain job on the same cluster instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.sklearn
import skops.io
from mlflow.models import Model

from raysplit.core.trust import untrusted


class UnsafeModel(RuntimeError):
    """The model is not a scikit-learn model, or loading it could run code it carries."""


@dataclass(frozen=True)
class ModelFiles:
    estimator: Any
    description: Model  # the MLmodel file: signature, metadata
    pickled: bool  # loaded from a pickle, or a skops file with types beyond the trusted ones


def read_model(local: Path, allow_pickle: bool = False) -> ModelFiles:
    """The estimator in the MLflow model directory ``local`` (already downloaded).

    skops files load only scikit-learn, NumPy and SciPy types (see :func:`load_skops`);
    pickle files are refused unless ``allow_pickle``, because unpickling runs whatever
    code the file names.
    """
    description = Model.load(str(local / "MLmodel"))
    flavor = description.flavors.get("sklearn")
    if flavor is None:
        raise UnsafeModel("not a scikit-learn model (no sklearn flavor in MLmodel)")
    serialization = flavor.get("serialization_format", "cloudpickle")
    if serialization != "skops" and not allow_pickle:
        raise UnsafeModel(
            f"it is serialised with {serialization}, and loading a pickle runs arbitrary"
            " code; log it with serialization_format='skops' (as `raysplit tune` does),"
            " or set allow_pickle: true in the user_config if you trust its source"
        )
    if serialization == "skops":
        estimator, pickled = load_skops(local / flavor["pickled_model"], allow_pickle)
    else:
        estimator, pickled = mlflow.sklearn.load_model(str(local)), True
    return ModelFiles(estimator, description, pickled)


def load_skops(path: Path, allow_pickle: bool) -> tuple[Any, bool]:
    """The estimator in a skops file, and whether it needed types beyond scikit-learn/NumPy/
    SciPy.

    The types to trust are read from the file and checked here, never taken from the
    MLmodel's ``skops_trusted_types``: that list is written by whoever logged the model, so
    a file trusting its own types would be as unsafe as a pickle. Such a model loads only
    with ``allow_pickle`` and is then treated like a pickle.
    """
    types = skops.io.get_untrusted_types(file=path)
    foreign = untrusted(types)
    if foreign and not allow_pickle:
        raise UnsafeModel(
            f"its skops file holds types outside scikit-learn/NumPy/SciPy: {foreign}; loading"
            " them could run their code, so set allow_pickle: true in the user_config only if"
            " you trust its source"
        )
    return skops.io.load(path, trusted=types), bool(foreign)
