"""`raysplit traffic --data FILE`: the user's own rows, renamed as `raysplit tune` renames
them and checked against what the application serves before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from raysplit.cli.main import main
from raysplit.cli.traffic import (
    ServedModel,
    file_sample,
    foreign_labels,
    uncovered_features,
)
from raysplit.core.errors import RaysplitError

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]
SERVED = ServedModel(IRIS, SPECIES, knows_classes=True)


def models_body(classes: list | None, *more: list | None) -> dict:
    """``GET /models`` as the ingress answers it, trimmed to what the check reads."""
    variants = [{"name": f"v{i}", "classes": c} for i, c in enumerate((classes, *more))]
    return {"features": IRIS, "variants": variants}


def iris_csv(tmp_path: Path, labels: list, name: str = "iris.csv") -> Path:
    """Rows with the CSV's own column names (``sepal length (cm)``), as sklearn ships them."""
    n = len(labels)
    frame = pd.DataFrame(
        {
            "sepal length (cm)": [5.1] * n,
            "Sepal Width (cm)": [3.5] * n,
            "petal length (cm)": [1.4] * n,
            "petal width (cm)": [0.2] * n,
            "notes": ["text"] * n,  # a column the model does not take: neither sent nor checked
            "species": labels,
        }
    )
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def test_labels_are_compared_as_text() -> None:
    """As the server compares feedback with a model's classes: 0 and "0" agree."""
    assert foreign_labels([0, "1", 2], ["0", 1, "2"]) == []
    assert foreign_labels(["class_0", "class_1", "class_0", 0], [0, 1]) == ["class_0", "class_1"]
    assert foreign_labels([1.0], [1]) == [1.0]  # "1.0" is not "1"
    assert foreign_labels([True], ["True"]) == []


def test_uncovered_features_in_the_models_order() -> None:
    assert uncovered_features(["petal_width", "x"], IRIS) == IRIS[:3]
    assert uncovered_features([*IRIS, "extra"], IRIS) == []


def test_served_model_from_the_models_answer() -> None:
    served = ServedModel.from_models(models_body(SPECIES, ["virginica", "other"]))
    assert served == ServedModel(IRIS, [*SPECIES, "other"], knows_classes=True)
    regressor = ServedModel.from_models(models_body(None, None))
    assert regressor.classes is None and regressor.knows_classes
    older = ServedModel.from_models({"features": IRIS, "variants": [{"name": "a"}]})
    assert not older.knows_classes


@pytest.mark.parametrize("name", ["iris.csv", "iris.parquet"])
def test_a_file_is_renamed_as_tune_renames_and_sends_only_the_models_features(
    tmp_path: Path, name: str
) -> None:
    path = iris_csv(tmp_path, ["setosa", "virginica"], name)
    sample = file_sample(path, "species", SERVED, feedback=True)
    assert sample.records == [dict(zip(IRIS, [5.1, 3.5, 1.4, 0.2], strict=True))] * 2
    assert sample.truth == ["setosa", "virginica"] and sample.key == "label"


def test_a_file_without_the_models_features_is_refused_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "wine.csv"
    pd.DataFrame({"alcohol": [1.0, 2.0], "sepal_length": [1.0, 2.0], "y": [0, 1]}).to_csv(
        path, index=False
    )
    with pytest.raises(RaysplitError) as caught:
        file_sample(path, "y", SERVED, feedback=False)
    assert str(caught.value) == (
        "--data wine.csv lacks the served model's feature(s) sepal_width, petal_length,"
        " petal_width; its columns, named as served: alcohol, sepal_length"
    )


def test_labels_of_another_vocabulary_are_refused_with_feedback_only(tmp_path: Path) -> None:
    path = iris_csv(tmp_path, ["class_0", "class_1", "setosa", "class_0"])
    with pytest.raises(RaysplitError) as caught:
        file_sample(path, "species", SERVED, feedback=True)
    assert str(caught.value) == (
        "--data iris.csv: label(s) 'class_0', 'class_1' in column 'species' are not the"
        " served model's classes: setosa, versicolor, virginica (compared as text)"
    )
    # without feedback the labels are never sent, so they need not match
    assert file_sample(path, "species", SERVED, feedback=False).key == "label"


def test_many_foreign_labels_are_named_a_few(tmp_path: Path) -> None:
    path = iris_csv(tmp_path, list(range(8)))
    with pytest.raises(RaysplitError, match=r"label\(s\) 0, 1, 2, 3, 4 \(8 distinct in all\)"):
        file_sample(path, "species", SERVED, feedback=True)


def test_integer_labels_match_integer_classes_sent_as_text(tmp_path: Path) -> None:
    path = iris_csv(tmp_path, [0, 1, 2])
    sample = file_sample(path, "species", ServedModel(IRIS, ["0", "1", "2"], True), True)
    assert sample.truth == [0, 1, 2]


def test_a_regressor_takes_numeric_values(tmp_path: Path) -> None:
    regressor = ServedModel(IRIS, None, knows_classes=True)
    sample = file_sample(iris_csv(tmp_path, [1.5, 2.0]), "species", regressor, feedback=True)
    assert sample.key == "value" and sample.truth == [1.5, 2.0]
    with pytest.raises(RaysplitError, match="the served model is a regressor, but column"):
        file_sample(iris_csv(tmp_path, ["a", "b"]), "species", regressor, feedback=True)


def test_data_needs_a_target_column(tmp_path: Path) -> None:
    with pytest.raises(
        RaysplitError, match=r"--data iris\.csv: name its label column with --target"
    ):
        file_sample(iris_csv(tmp_path, ["setosa"]), None, SERVED, feedback=False)
    with pytest.raises(RaysplitError, match="target column 'kind' not found; columns are:"):
        file_sample(iris_csv(tmp_path, ["setosa"]), "kind", SERVED, feedback=False)


def test_data_and_dataset_together_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["traffic", "--data", "x.csv", "--dataset", "iris", "--url", "http://127.0.0.1:9"])
    assert code == 2
    assert (
        capsys.readouterr().err == "raysplit: error: give --data FILE or --dataset NAME, not both\n"
    )
