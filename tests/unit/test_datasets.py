from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysplit.core.errors import RaysplitError
from tune.datasets import (
    BUNDLED,
    Task,
    clean_identifier,
    clean_identifiers,
    infer_task,
    load_dataset,
    split_dataset,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("sepal length (cm)", "sepal_length"),
        ("mean radius", "mean_radius"),
        ("od280/od315_of_diluted_wines", "od280_od315_of_diluted_wines"),
        ("Petal-Width", "petal_width"),
        ("2nd feature", "f_2nd_feature"),
        ("(cm)", "feature"),
        ("  x  ", "x"),
    ],
)
def test_clean_identifier(raw: str, clean: str) -> None:
    assert clean_identifier(raw) == clean


def test_clean_identifiers_keep_names_unique() -> None:
    assert clean_identifiers(["a b", "a-b", "A_B", "c"]) == ["a_b", "a_b_2", "a_b_3", "c"]


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], Task.CLASSIFICATION),
        ([0, 1, 1, 0], Task.CLASSIFICATION),
        ([True, False], Task.CLASSIFICATION),
        ([0.5, 1.7, 2.2], Task.REGRESSION),
        (list(range(100)), Task.REGRESSION),
        ([1.0, 2.0, 1.0], Task.CLASSIFICATION),
    ],
)
def test_infer_task(values: list, task: Task) -> None:
    assert infer_task(pd.Series(values)) is task


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_datasets_load_with_clean_names(name: str) -> None:
    data = load_dataset(name)
    assert all(c.isidentifier() for c in data.features.columns)
    assert data.features.dtypes.eq("float64").all()
    assert data.task is (Task.REGRESSION if name == "diabetes" else Task.CLASSIFICATION)


def test_iris_has_the_seed_field_names_and_class_names() -> None:
    data = load_dataset("iris")
    assert list(data.features.columns) == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert data.class_labels == ["setosa", "versicolor", "virginica"]


def test_unknown_dataset_lists_the_bundled_ones() -> None:
    with pytest.raises(RaysplitError, match=r"unknown dataset 'irs'.*iris, wine"):
        load_dataset("irs")


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_csv_and_parquet_load_the_same(tmp_path: Path) -> None:
    frame = pd.DataFrame({"Feature One": [1.0, 2.0, 3.0, 4.0], "y": ["a", "b", "a", "b"]})
    frame.to_parquet(tmp_path / "d.parquet")
    from_csv = load_dataset(path=_csv(tmp_path, frame), target="y")
    from_parquet = load_dataset(path=tmp_path / "d.parquet", target="y")
    assert list(from_csv.features.columns) == ["feature_one"]
    pd.testing.assert_frame_equal(from_csv.features, from_parquet.features)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RaysplitError, match=r"dataset file not found: .*nope\.csv"):
        load_dataset(path=tmp_path / "nope.csv", target="y")


def test_missing_target_column_lists_the_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path, pd.DataFrame({"a": [1.0], "b": [2.0]}))
    with pytest.raises(RaysplitError, match="target column 'label' not found; columns are: a, b"):
        load_dataset(path=path, target="label")


def test_non_numeric_feature_is_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, pd.DataFrame({"a": [1.0, 2.0], "colour": ["red", "blue"], "y": [0, 1]}))
    with pytest.raises(RaysplitError, match="feature column 'colour' is not numeric"):
        load_dataset(path=path, target="y")


def test_missing_feature_values_are_named(tmp_path: Path) -> None:
    path = _csv(tmp_path, pd.DataFrame({"a": [1.0, np.nan], "y": [0, 1]}))
    with pytest.raises(RaysplitError, match="feature column 'a' has 1 missing values"):
        load_dataset(path=path, target="y")


def test_nan_in_target_is_counted_with_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path, pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": [0.5, None, 1.5]}))
    with pytest.raises(RaysplitError, match=r"target column 'y' has 1 missing values \(rows 1\)"):
        load_dataset(path=path, target="y")


def test_regression_override_needs_a_numeric_target(tmp_path: Path) -> None:
    path = _csv(tmp_path, pd.DataFrame({"a": [1.0, 2.0], "y": ["x", "z"]}))
    with pytest.raises(RaysplitError, match="task is regression but target 'y' is not numeric"):
        load_dataset(path=path, target="y", task=Task.REGRESSION)


def test_split_is_stratified_and_reproducible() -> None:
    data = load_dataset("iris")
    first = split_dataset(data, test_size=0.2, seed=7, cv_folds=5)
    again = split_dataset(data, test_size=0.2, seed=7, cv_folds=5)
    assert first.y_test.value_counts().to_dict() == {
        "setosa": 10,
        "versicolor": 10,
        "virginica": 10,
    }
    pd.testing.assert_index_equal(first.x_train.index, again.x_train.index)


def test_too_few_rows_per_class_for_the_folds(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(24.0), "y": ["big"] * 20 + ["small"] * 4})
    data = load_dataset(path=_csv(tmp_path, frame), target="y")
    with pytest.raises(
        RaysplitError, match="class 'small' has 3 training rows, fewer than cv_folds=5"
    ):
        split_dataset(data, test_size=0.2, seed=0, cv_folds=5)
