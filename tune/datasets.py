"""Load a bundled scikit-learn dataset or a CSV/Parquet file as clean, validated tables.

Feature names become Python identifiers (``sepal length (cm)`` -> ``sepal_length``) because
they are the field names of the HTTP API later; every check here runs before Ray or MLflow
is touched, so bad data fails fast and leaves nothing behind.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

from raysplit.core.errors import RaysplitError
from raysplit.core.names import clean_identifiers

MAX_CLASSES = 20  # an integer target with more distinct values than this is taken as regression


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


BUNDLED: dict[str, Callable[..., object]] = {
    "iris": sk_datasets.load_iris,
    "wine": sk_datasets.load_wine,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "digits": sk_datasets.load_digits,
    "diabetes": sk_datasets.load_diabetes,
}


@dataclass(frozen=True)
class Dataset:
    """Features and target with clean names, ready for scikit-learn."""

    name: str
    features: pd.DataFrame
    target: pd.Series
    task: Task
    # the source's column names that had to change to be served (original -> served)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def class_labels(self) -> list[str | int | float] | None:
        if self.task is Task.REGRESSION:
            return None
        return sorted(self.target.unique().tolist())


@dataclass(frozen=True)
class Split:
    """The stratified train/test split every trial and the final refit share."""

    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def infer_task(target: pd.Series) -> Task:
    """Text, boolean or few-valued integer targets are classes; other numbers are regression."""
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        return Task.CLASSIFICATION
    values = target.to_numpy(dtype=float)
    integral = bool(np.all(np.mod(values, 1) == 0))
    return Task.CLASSIFICATION if integral and target.nunique() <= MAX_CLASSES else Task.REGRESSION


def load_bundled(name: str) -> tuple[pd.DataFrame, pd.Series]:
    """A scikit-learn bundled dataset (offline), with class names as labels."""
    if name not in BUNDLED:
        raise RaysplitError(
            f"unknown dataset '{name}'; bundled datasets are: {', '.join(BUNDLED)}"
            " (or give a CSV/Parquet file with 'path' and 'target')"
        )
    bunch = BUNDLED[name](as_frame=True)
    features = bunch.frame.drop(columns=[bunch.target.name])
    target = bunch.target
    names = getattr(bunch, "target_names", None)
    if names is not None and name != "digits":
        target = target.map(dict(enumerate(str(n) for n in names)))
    return features, target.rename("target")


def load_table(path: Path, target: str | None) -> tuple[pd.DataFrame, pd.Series]:
    """A CSV or Parquet file whose ``target`` column is the label."""
    if not path.is_file():
        raise RaysplitError(f"dataset file not found: {path}")
    if target is None:
        raise RaysplitError(f"dataset {path.name}: name the target column with 'target'")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path)
        elif suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            raise RaysplitError(f"dataset {path.name}: expected a .csv or .parquet file")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise RaysplitError(f"dataset {path.name} could not be read: {exc}") from exc
    if target not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise RaysplitError(
            f"dataset {path.name}: target column '{target}' not found; columns are: {columns}"
        )
    return frame.drop(columns=[target]), frame[target]


def validate_table(features: pd.DataFrame, target: pd.Series, source: str) -> None:
    """Reject what scikit-learn would fail on later, naming the column at fault."""
    if features.shape[1] == 0:
        raise RaysplitError(f"dataset {source}: no feature columns besides the target")
    for column in features.columns:
        series = features[column]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            example = series.dropna().iloc[0] if series.notna().any() else None
            raise RaysplitError(
                f"dataset {source}: feature column '{column}' is not numeric"
                f" (dtype {series.dtype}, e.g. {example!r}); encode it as numbers or drop it"
            )
        missing = int(series.isna().sum())
        if missing:
            raise RaysplitError(
                f"dataset {source}: feature column '{column}' has {missing} missing values"
            )
        if not np.all(np.isfinite(series.to_numpy(dtype=float))):
            raise RaysplitError(f"dataset {source}: feature column '{column}' has infinite values")
    missing_rows = target.index[target.isna()].tolist()
    if missing_rows:
        shown = ", ".join(str(r) for r in missing_rows[:5])
        raise RaysplitError(
            f"dataset {source}: target column '{target.name}' has {len(missing_rows)}"
            f" missing values (rows {shown})"
        )


def load_dataset(
    name: str | None = None,
    path: Path | None = None,
    target: str | None = None,
    task: Task | None = None,
) -> Dataset:
    """Load, clean and validate a dataset; ``task`` overrides the inferred one."""
    if path is not None:
        features, labels = load_table(path, target)
        source = path.name
        label = name or path.stem
    elif name is not None:
        features, labels = load_bundled(name)
        source = label = name
    else:
        raise RaysplitError("dataset: give a bundled 'name' or a file 'path'")
    validate_table(features, labels, source)
    served = clean_identifiers(features.columns)
    renamed = {str(o): s for o, s in zip(features.columns, served, strict=True) if str(o) != s}
    features = features.set_axis(served, axis=1).reset_index(drop=True)
    labels = labels.reset_index(drop=True)
    inferred = infer_task(labels)
    task = task or inferred
    if task is Task.REGRESSION and not pd.api.types.is_numeric_dtype(labels):
        raise RaysplitError(
            f"dataset {source}: task is regression but target '{labels.name}' is not numeric"
        )
    features = features.astype("float64")
    return Dataset(name=label, features=features, target=labels, task=task, renamed=renamed)


def split_dataset(dataset: Dataset, test_size: float, seed: int, cv_folds: int) -> Split:
    """Hold out a test split (stratified for classes) and check the folds can be built."""
    stratify = None
    if dataset.task is Task.CLASSIFICATION:
        counts = dataset.target.value_counts()
        if len(counts) < 2:
            raise RaysplitError(f"dataset {dataset.name}: the target has only one class")
        if counts.min() < 2:
            raise RaysplitError(
                f"dataset {dataset.name}: class {counts.idxmin()!r} has {counts.min()} row;"
                " every class needs at least 2 rows to be split into train and test"
            )
        stratify = dataset.target
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            dataset.features,
            dataset.target,
            test_size=test_size,
            random_state=seed,
            stratify=stratify,
        )
    except ValueError as exc:
        raise RaysplitError(f"dataset {dataset.name}: cannot split: {exc}") from exc
    check_folds(y_train, dataset.task, cv_folds, dataset.name)
    return Split(x_train, x_test, y_train, y_test)


def check_folds(y_train: pd.Series, task: Task, cv_folds: int, source: str) -> None:
    """Refuse a training split the cross-validation cannot fold, before any trial runs."""
    if task is Task.CLASSIFICATION:
        counts = y_train.value_counts()
        if len(counts) < 2:
            raise RaysplitError(f"dataset {source}: the training split has only one class")
        if counts.min() < cv_folds:
            raise RaysplitError(
                f"dataset {source}: class {counts.idxmin()!r} has {counts.min()} training"
                f" rows, fewer than cv_folds={cv_folds}; add rows or lower cv_folds"
            )
    elif len(y_train) < cv_folds * 2:
        raise RaysplitError(
            f"dataset {source}: {len(y_train)} training rows are too few for cv_folds={cv_folds}"
        )


def split_by_time(
    features: pd.DataFrame,
    target: pd.Series,
    created_at: Sequence[float],
    test_size: float,
    source: str,
) -> Split:
    """Hold out the newest ``test_size`` of the rows, by time, as the test split.

    Production rows are not exchangeable: a random split would let the model see the
    future it is scored on. The test rows are the newest ``ceil(test_size * n)``, as
    scikit-learn rounds a fractional test size; both splits keep time order (ties keep
    their given order).
    """
    rows = len(target)
    if not len(features) == rows == len(created_at):
        raise ValueError("features, target and created_at differ in length")
    n_test = math.ceil(test_size * rows)
    if rows < 2 or n_test >= rows:
        raise RaysplitError(
            f"dataset {source}: {rows} rows cannot be split into train and test"
            f" with test_size={test_size}"
        )
    order = np.argsort(np.asarray(created_at, dtype=float), kind="stable")
    train, test = order[: rows - n_test], order[rows - n_test :]
    return Split(
        features.iloc[train].reset_index(drop=True),
        features.iloc[test].reset_index(drop=True),
        target.iloc[train].reset_index(drop=True),
        target.iloc[test].reset_index(drop=True),
    )


def with_training_rows(split: Split, features: pd.DataFrame, target: pd.Series) -> Split:
    """``split`` with more rows (the original dataset) ahead of its training rows; the
    test split is untouched, so it still measures the newest rows only."""
    x_train = pd.concat([features, split.x_train], ignore_index=True)
    y_train = pd.concat([target, split.y_train], ignore_index=True).rename(split.y_train.name)
    return Split(x_train, split.x_test, y_train, split.y_test)
