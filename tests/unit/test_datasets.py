from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysplit.core.errors import RaysplitError
from raysplit.core.names import clean_identifier, clean_identifiers
from tune.datasets import (
    BUNDLED,
    Task,
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


def test_the_served_feature_names_and_renames_are_said(tmp_path: Path) -> None:
    """A CSV's own column names are rewritten to serve as JSON fields; the search says the
    served names and each rename where people look (issue 38: a newcomer sent the CSV's
    names and got "missing feature(s)" with no hint)."""
    from tune.search import SearchOutcome, outcome_lines

    path = tmp_path / "wine.csv"
    pd.DataFrame(
        {
            "alcohol": [13.2, 12.4, 14.1, 13.0],
            "OD280/OD315 of diluted wines": [3.1, 2.2, 2.9, 3.4],
            "class": ["a", "b", "a", "b"],
        }
    ).to_csv(path, index=False)
    dataset = load_dataset(path=path, target="class")
    assert dataset.renamed == {"OD280/OD315 of diluted wines": "od280_od315_of_diluted_wines"}
    outcome = SearchOutcome(
        experiment_id="1",
        parent_run_id="r",
        trials=1,
        completed_trials=1,
        early_stopped_trials=0,
        metric="accuracy",
        best_family="svc",
        best_params={},
        best_cv_score=0.9,
        test_scores={},
        model_name="wine",
        model_version="1",
        alias=None,
        search_seconds=1.0,
        folds_fitted=5,
        features=list(dataset.features.columns),
        renamed=dataset.renamed,
    )
    lines = outcome_lines(outcome)
    assert "features (as requests name them): alcohol, od280_od315_of_diluted_wines" in lines
    assert (
        "renamed from the data: 'OD280/OD315 of diluted wines' -> od280_od315_of_diluted_wines"
        in lines
    )
