"""The Open Inference Protocol's binary tensor extension, encoded and decoded by
``tritonclient`` itself (its request builder and response parser), as its users send it
by default."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.http._utils import _get_inference_request

from serve_app.config.errors import InvalidRequest
from serve_app.http.oip_codec import binary_outputs, infer_response, parse_infer, split_binary

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])


def client_body(
    inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None
) -> tuple[bytes, int | None]:
    return _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)


def parsed(body: bytes, header: int | None) -> tuple[object, np.ndarray]:
    blob = None
    if header is not None:
        body, blob = split_binary(body, str(header))
    return parse_infer(orjson.loads(body), FEATURES, 1000, blob)


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "FP16", "INT64", "UINT8"])
def test_binary_inputs_of_every_numeric_type_arrive_as_the_client_sent_them(
    datatype: str,
) -> None:
    values = ROWS if datatype.startswith("FP") else np.round(ROWS)
    array = values.astype(triton.triton_to_np_dtype(datatype))
    tensor = triton.InferInput("input-0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)  # binary_data=True: tritonclient's default
    body, header = client_body([tensor], None)
    assert header is not None
    request, rows = parsed(body, header)
    np.testing.assert_array_equal(rows, array.astype(np.float64))
    assert binary_outputs(request) == {"predict", "predict_proba"}  # binary_data_output


def test_per_feature_binary_tensors_mixed_with_json_ones() -> None:
    tensors = []
    for i, name in enumerate(FEATURES):
        tensor = triton.InferInput(name, [len(ROWS)], "FP64")
        tensor.set_data_from_numpy(ROWS[:, i].copy(), binary_data=i % 2 == 0)
        tensors.append(tensor)
    outputs = [
        triton.InferRequestedOutput("predict", binary_data=False),
        triton.InferRequestedOutput("predict_proba", binary_data=True),
    ]
    request, rows = parsed(*client_body(tensors, outputs))
    np.testing.assert_array_equal(rows, ROWS)
    assert binary_outputs(request) == {"predict_proba"}


def test_binary_outputs_decode_in_tritonclient_to_what_the_model_answered() -> None:
    predictions = ["setosa", "virginica", "versicolor"]
    probabilities = [[0.98, 0.02, 0.0], [0.0, 0.1, 0.9], [0.01, 0.8, 0.19]]
    payload, blob = infer_response(
        "iris", "2", "r1", "champion", predictions, probabilities, {"predict", "predict_proba"}
    )
    header = orjson.dumps(payload)
    result = triton.InferResult.from_response_body(header + blob, header_length=len(header))
    assert [p.decode() for p in result.as_numpy("predict")] == predictions
    np.testing.assert_array_equal(result.as_numpy("predict_proba"), probabilities)
    assert result.get_response()["parameters"] == {"variant": "champion"}
    # a batch's labels repeat (each distinct one is encoded once), and need not be ASCII
    many = [*predictions, "é", *reversed(predictions)] * 4
    payload, blob = infer_response("iris", "2", "r3", "champion", many, None, {"predict"})
    header = orjson.dumps(payload)
    result = triton.InferResult.from_response_body(header + blob, header_length=len(header))
    assert [p.decode() for p in result.as_numpy("predict")] == many
    regression, blob = infer_response("d", "1", "r2", "a", [1.5, -2.25], None, {"predict"})
    header = orjson.dumps(regression)
    result = triton.InferResult.from_response_body(header + blob, header_length=len(header))
    np.testing.assert_array_equal(result.as_numpy("predict"), [1.5, -2.25])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body, n: (body[:-8], n), r"binary_data_size 96 does not fit the 88 bytes"),
        (lambda body, n: (body + b"xx", n), "2 bytes after the binary inputs' data"),
        (lambda body, n: (body, len(body) + 1), "does not fit a body of"),
        (lambda body, n: (body, "ten"), "'ten' is not a number"),
    ],
)
def test_a_malformed_binary_body_is_a_400_naming_the_problem(mangle, message: str) -> None:
    tensor = triton.InferInput("input-0", [3, 4], "FP64")
    tensor.set_data_from_numpy(ROWS)
    body, header = mangle(*client_body([tensor], None))
    with pytest.raises(InvalidRequest, match=message) as refused:
        parsed(body, header)
    assert refused.value.status == 400


def test_binary_data_that_does_not_fill_the_shape_is_refused() -> None:
    tensor = triton.InferInput("input-0", [3, 4], "FP32")
    tensor.set_data_from_numpy(ROWS.astype(np.float32))
    body, header = client_body([tensor], None)
    fixed = body.replace(b'"shape":[3,4]', b'"shape":[4,4]')
    with pytest.raises(InvalidRequest, match=r"48 bytes of binary data; shape \[4, 4\]"):
        parsed(fixed, header)
