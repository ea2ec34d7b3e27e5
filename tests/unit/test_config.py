from pathlib import Path

import pytest
import yaml

from raysplit.core.errors import RaysplitError
from tune.config import Distribution, SearchConfig, load_spec, parse_override, resolve_plan
from tune.datasets import Task
from tune.spaces import candidate_from_config, grid_candidates


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (3, "constant"),
        (None, "constant"),
        ({"choice": [1, None]}, "choice"),
        ({"loguniform": [0.001, 10]}, "loguniform"),
        ({"randint": [1, 5]}, "randint"),
    ],
)
def test_distribution_compact_forms(raw: object, kind: str) -> None:
    assert Distribution.model_validate(raw).kind == kind


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"loguniform": [0, 1]}, "loguniform needs low > 0"),
        ({"uniform": [2, 1]}, "uniform needs low < high"),
        ({"uniform": [1]}, r"uniform needs \[low, high\] as two numbers"),
        ({"randint": [1.5, 4]}, "randint needs integer bounds"),
        ({"normal": [0, 1]}, "unknown search-space kind 'normal'"),
        ({"choice": []}, "choice needs a non-empty list"),
        ([1, 2], "bare list"),
        ({"uniform": [0, 1], "choice": [1]}, "a search-space entry is a constant or one of"),
    ],
)
def test_malformed_search_space_is_explained(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Distribution.model_validate(raw)


def test_load_spec_reports_every_bad_field_on_one_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "dataset": {"name": "iris"},
            "search": {"families": {"xgboost": {}}, "cv_folds": 1},
        },
    )
    with pytest.raises(RaysplitError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert "search.families: unknown model family 'xgboost'" in message
    assert "search.cv_folds: Input should be greater than or equal to 2" in message


def test_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RaysplitError, match="searh: Extra inputs are not permitted"):
        load_spec(write(tmp_path, {"dataset": {"name": "iris"}, "searh": {}}))


def test_space_error_names_the_parameter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "dataset": {"name": "iris"},
            "search": {"families": {"svc": {"C": {"loguniform": [-1, 1]}}}},
        },
    )
    with pytest.raises(RaysplitError, match=r"search.families.svc.C: loguniform needs low > 0"):
        load_spec(path)


def test_missing_config_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RaysplitError, match="config file not found"):
        load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(RaysplitError, match="not valid YAML"):
        load_spec(bad)


def test_overrides_win_and_dataset_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"dataset": {"path": "data.csv", "target": "y"}})
    spec = load_spec(path, dict([parse_override("search.num_samples=7")]))
    assert spec.search.num_samples == 7
    assert spec.dataset.path == tmp_path / "data.csv"
    with pytest.raises(RaysplitError, match="is not KEY=VALUE"):
        parse_override("num_samples")


def test_plan_fills_defaults_for_the_task() -> None:
    plan = resolve_plan(SearchConfig(), Task.CLASSIFICATION)
    assert set(plan.spaces) == {
        "logistic_regression",
        "random_forest",
        "hist_gradient_boosting",
        "svc",
        "knn",
    }
    assert plan.metric.name == "accuracy"
    regression = resolve_plan(SearchConfig(), Task.REGRESSION)
    assert set(regression.spaces) == {"ridge", "random_forest", "hist_gradient_boosting"}
    assert regression.metric.name == "r2"


@pytest.mark.parametrize(
    ("search", "task", "message"),
    [
        ({"families": ["svc"]}, Task.REGRESSION, "model family 'svc' does not do regression"),
        ({"metric": "rmse"}, Task.CLASSIFICATION, "metric 'rmse' is not for classification"),
        (
            {"families": {"knn": {"neighbours": 3}}},
            Task.CLASSIFICATION,
            "search.families.knn: unknown parameter 'neighbours'",
        ),
        (
            {"families": {"random_forest": {"max_depth": {"choice": ["deep"]}}}},
            Task.CLASSIFICATION,
            "search.families.random_forest.max_depth: The 'max_depth' parameter",
        ),
        (
            {"algorithm": "grid", "families": ["svc"]},
            Task.CLASSIFICATION,
            "grid search needs finite values, but C, gamma are a range",
        ),
    ],
)
def test_plan_rejects_what_trials_would_fail_on(search: dict, task: Task, message: str) -> None:
    with pytest.raises(RaysplitError, match=message):
        resolve_plan(SearchConfig.model_validate(search), task)


def test_grid_enumerates_each_family_separately() -> None:
    search = SearchConfig.model_validate(
        {
            "algorithm": "grid",
            "families": {
                "knn": {"n_neighbors": {"choice": [1, 3, 5]}, "weights": {"choice": ["uniform"]}},
                "logistic_regression": {"C": {"choice": [0.1, 1.0]}},
            },
        }
    )
    candidates = grid_candidates(resolve_plan(search, Task.CLASSIFICATION))
    assert len(candidates) == 5
    assert candidate_from_config(candidates[-1]) == ("logistic_regression", {"C": 1.0})


def test_candidate_keeps_only_the_drawn_family() -> None:
    config = {"family": "svc", "svc.C": 2.0, "knn.n_neighbors": 3, "svc.gamma": 0.1}
    assert candidate_from_config(config) == ("svc", {"C": 2.0, "gamma": 0.1})
