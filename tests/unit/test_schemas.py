import numpy as np
import pytest

from serve_app.config.errors import InvalidRequest
from serve_app.http.oip_codec import infer_response, parse_infer
from serve_app.http.schemas import parse_instances, parse_json, rename_hint

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RECORD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_record_and_instances_give_rows_in_signature_order() -> None:
    reordered = dict(reversed(list(RECORD.items())))
    single = parse_instances(reordered, FEATURES, 10)
    batch = parse_instances({"instances": [RECORD, [6.7, 3, 5.2, 2.3]]}, FEATURES, 10)
    np.testing.assert_array_equal(single, [[5.1, 3.5, 1.4, 0.2]])
    np.testing.assert_array_equal(batch, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])


def test_a_batch_may_mix_records_and_lists() -> None:
    rows = parse_instances({"instances": [RECORD, [1, 2, 3, 4]]}, FEATURES, 10)
    assert rows.tolist() == [[RECORD[f] for f in FEATURES], [1.0, 2.0, 3.0, 4.0]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {k: v for k, v in RECORD.items() if k != "petal_width"},
            "missing feature\\(s\\): petal_width",
        ),
        ({**RECORD, "colour": 1}, "unknown feature\\(s\\): colour; expected: sepal_length"),
        ({**RECORD, "sepal_length": "5.1"}, "feature 'sepal_length' must be a number, got str"),
        ({**RECORD, "sepal_length": True}, "feature 'sepal_length' must be a number, got bool"),
        ({**RECORD, "sepal_length": None}, "must be a number, got NoneType"),
        ({**RECORD, "sepal_length": [1]}, "must be a number, got list"),
        ({**RECORD, "petal_width": 10**400}, "too large for a 64-bit float"),
        ({**RECORD, "petal_width": float("inf")}, "feature 'petal_width' must be finite"),
        ({**RECORD, "petal_width": float("nan")}, "feature 'petal_width' must be finite"),
        ({"instances": []}, "instances is empty"),
        ({"instances": [RECORD] * 11}, "batch of 11 rows exceeds the limit of 10"),
        ({"instances": [[1, 2, 3]]}, "row 0: has 3 values; expected 4"),
        ({"instances": [RECORD, "x"]}, "row 1: each instance must be an object"),
        ({"instances": RECORD}, "instances must be a list"),
        ({"instances": [RECORD], "extra": 1}, "unexpected field\\(s\\) next to instances: extra"),
        # the one-pass batch check must hand every defect to the row-by-row messages
        ({"instances": [RECORD, {**RECORD, "sepal_width": True}]}, "row 1: feature 'sepal_width'"),
        ({"instances": [RECORD, {**RECORD, "sepal_width": "3"}]}, "row 1: .* got str"),
        ({"instances": [[1, 2, 3, 4], [1, 2, 3, None]]}, "row 1: feature 'petal_width'"),
        ({"instances": [RECORD, {**RECORD, "petal_width": float("nan")}]}, "row 1: .* finite"),
        ({"instances": [RECORD, {**RECORD, "petal_width": 10**400}]}, "too large for a 64-bit"),
        ([RECORD], "body must be a JSON object"),
    ],
)
def test_malformed_bodies_are_explained(body: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_instances(body, FEATURES, 10)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "request body is empty"), (b"{", "not valid JSON"), (b'{"a": NaN}', "not valid JSON")],
)
def test_unparseable_bodies_are_400(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_json(raw)
    assert caught.value.status == 400


def test_oip_matrix_and_per_feature_tensors() -> None:
    matrix = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
            }
        ]
    }
    columns = {
        "inputs": [
            {"name": f, "shape": [2], "datatype": "FP64", "data": [RECORD[f], RECORD[f]]}
            for f in FEATURES
        ]
    }
    _, rows = parse_infer(matrix, FEATURES, 10)
    assert rows.shape == (2, 4)
    _, rows = parse_infer(columns, FEATURES, 10)
    np.testing.assert_array_equal(rows[1], [5.1, 3.5, 1.4, 0.2])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": []}, "inputs: List should have at least 1 item"),
        (
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            "has 3 columns; expected 4",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2]}]},
            "does not fit shape",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]},
            "datatype BYTES is not numeric",
        ),
        (
            {"inputs": [{"name": "sepal_length", "shape": [1], "datatype": "FP32", "data": [1]}]},
            "missing: \\['sepal_width'",
        ),
    ],
)
def test_oip_mistakes_are_400(payload: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_infer(payload, FEATURES, 10)
    assert caught.value.status == 400


def test_oip_response_tensors() -> None:
    response, binary = infer_response("iris", "2", "r1", "champion", ["setosa"], [[0.9, 0.1, 0.0]])
    assert binary == b""  # nothing asked as binary data
    predict, proba = response["outputs"]
    assert predict == {"name": "predict", "shape": [1], "datatype": "BYTES", "data": ["setosa"]}
    assert proba["shape"] == [1, 3] and proba["datatype"] == "FP64"


def test_feedback_single_and_batch() -> None:
    from serve_app.events.feedback import parse_feedback

    assert parse_feedback({"request_id": "r1", "label": "setosa"})[0].label == "setosa"
    items = parse_feedback([{"request_id": "r1", "value": 2.5}, {"request_id": "r2", "label": 1}])
    assert [i.request_id for i in items] == ["r1", "r2"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"request_id": "r1"}, "feedback: give exactly one of label"),
        ({"request_id": "r1", "label": "a", "value": 1.0}, "give exactly one of label"),
        (
            [{"request_id": "r1", "label": "a"}, {"label": "a"}],
            r"feedback\[1\]: request_id: Field required",
        ),
        ({"request_id": "", "label": "a"}, "request_id: request id is empty"),
        ({"request_id": "r" * 129, "label": "a"}, "129 characters long; the limit is 128"),
        ({"request_id": "r\x00", "label": "a"}, "holds a non-printable character"),
        ({"request_id": "r1", "label": "a", "extra": 1}, "extra: Extra inputs are not permitted"),
        ([], "feedback list is empty"),
    ],
)
def test_feedback_mistakes_are_named(payload: object, message: str) -> None:
    from serve_app.events.feedback import parse_feedback

    with pytest.raises(InvalidRequest, match=message):
        parse_feedback(payload)


def test_a_correction_is_asked_for_with_a_json_boolean_only() -> None:
    """``replace`` overwrites a stored label: "yes" (which pydantic would read as true) is
    refused with a 422 naming the field, and only true/false are taken."""
    from serve_app.events.feedback import parse_feedback

    with pytest.raises(InvalidRequest) as caught:
        parse_feedback({"request_id": "r1", "label": "setosa", "replace": "yes"})
    assert caught.value.status == 422
    assert str(caught.value) == "feedback: replace: must be JSON true or false, not 'yes'"
    with pytest.raises(InvalidRequest, match=r"feedback\[0\]: replace: .* not 1"):
        parse_feedback([{"request_id": "r1", "label": "setosa", "replace": 1}])
    (item,) = parse_feedback({"request_id": "r1", "label": "setosa", "replace": True})
    assert item.replace is True
    assert parse_feedback({"request_id": "r1", "label": "setosa"})[0].replace is False


@pytest.mark.parametrize(
    ("item", "classes", "problem"),
    [
        ({"label": "setosa"}, ["setosa", "versicolor"], None),
        ({"label": 0}, [0, 1, 2], None),
        ({"label": "0"}, [0, 1, 2], None),  # as the model reads it: the same class
        ({"label": "class_0"}, [0, 1, 2], "'class_0' is not one of the model's classes: 0, 1, 2"),
        ({"value": 2.0}, ["a", "b"], "send a 'label', one of a, b"),
        ({"value": 2.0}, None, None),
        ({"label": "a"}, None, "regressors: send a numeric 'value'"),
    ],
)
def test_a_label_is_checked_against_the_models_classes(
    item: dict, classes: list | None, problem: str | None
) -> None:
    from serve_app.events.feedback import UNKNOWN, FeedbackItem, label_problem

    parsed = FeedbackItem.model_validate({"request_id": "r1", **item})
    found = label_problem(parsed, classes)
    assert (found is None) if problem is None else (problem in found), found
    assert label_problem(parsed, UNKNOWN) is None  # another experiment's: not ours to judge


WINE = ["alcohol", "malic_acid", "od280_od315_of_diluted_wines"]


def test_a_missing_feature_names_what_came_what_is_served_and_the_renames() -> None:
    """Issue 38: a client sent the training CSV's own column names and got a bare
    "missing feature(s)"; the 422 now says what arrived, what is expected and which served
    name each of its keys became (the rule `raysplit tune` renamed the columns by)."""
    body = {"Alcohol": 13.2, "malic_acid": 1.8, "OD280/OD315 of diluted wines": 3.1}
    with pytest.raises(InvalidRequest) as caught:
        parse_instances(body, WINE, 10)
    assert caught.value.status == 422
    assert str(caught.value) == (
        "missing feature(s): alcohol, od280_od315_of_diluted_wines;"
        " received: Alcohol, malic_acid, OD280/OD315 of diluted wines;"
        " expected: alcohol, malic_acid, od280_od315_of_diluted_wines;"
        " 'Alcohol' is served as alcohol,"
        " 'OD280/OD315 of diluted wines' is served as od280_od315_of_diluted_wines"
    )


def test_a_missing_feature_without_a_rename_says_no_rename() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_instances({"instances": [RECORD, {"sepal_length": 1.0}]}, FEATURES, 10)
    assert str(caught.value) == (
        "row 1: missing feature(s): sepal_width, petal_length, petal_width;"
        " received: sepal_length; expected: " + ", ".join(FEATURES)
    )
    with pytest.raises(InvalidRequest, match="; received: none; expected: sepal_length"):
        parse_instances({}, FEATURES, 10)


def test_long_key_lists_and_long_keys_are_cut_short() -> None:
    """A hostile body with thousands of keys (or one huge key) still gets a one-line 422."""
    body = {f"key{i}": 1.0 for i in range(5000)} | {"k" * 10_000: 1.0}
    with pytest.raises(InvalidRequest) as caught:
        parse_instances(body, FEATURES, 10)
    message = str(caught.value)
    assert message.startswith("missing feature(s): sepal_length, sepal_width,")
    assert "received: key0, key1," in message and "key19 and 4981 more;" in message
    assert "key20," not in message and len(message) < 1000
    features = [f"f{i}" for i in range(30)]
    with pytest.raises(InvalidRequest, match=r"expected: f0, .*, f19 and 10 more$"):
        parse_instances({"F 0": 1.0}, features, 10)


def test_the_rename_hint_clips_a_long_key() -> None:
    key = "Sepal Length (cm) " + "x" * 100
    assert rename_hint([key, "sepal length (cm)"], FEATURES) == (
        "; 'sepal length (cm)' is served as sepal_length"
    )
    long_name = "Q" * 100
    hint = rename_hint([long_name], ["q" * 100])
    assert hint == f"; {'Q' * 57 + '...'!r} is served as {'q' * 100}"


def test_oip_per_feature_inputs_get_the_same_rename_hint() -> None:
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}
        for name in ("sepal length (cm)", "sepal_width", "petal_length", "petal_width")
    ]
    with pytest.raises(InvalidRequest) as caught:
        parse_infer({"inputs": inputs}, FEATURES, 10)
    assert str(caught.value).endswith(
        "missing: ['sepal_length'], unknown: ['sepal length (cm)'];"
        " 'sepal length (cm)' is served as sepal_length"
    )
