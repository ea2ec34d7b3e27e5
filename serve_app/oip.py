"""Open Inference Protocol (v2 REST) tensors to feature rows and predictions back.

Accepted inputs: one tensor of shape ``[rows, features]`` (or ``[features]`` for one row)
in signature order, or one tensor per feature, named after it, of shape ``[rows]`` or
``[rows, 1]``. Outputs: ``predict`` and, for classifiers, ``predict_proba``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from serve_app.errors import InvalidRequest

NUMERIC = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}


class InferTensor(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


def _array(tensor: InferTensor) -> np.ndarray:
    if tensor.datatype not in NUMERIC:
        raise InvalidRequest(
            f"input '{tensor.name}': datatype {tensor.datatype} is not numeric", 400
        )
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"input '{tensor.name}': data does not fit shape {tensor.shape}: {exc}", 400
        ) from exc
    if not np.all(np.isfinite(values)):
        raise InvalidRequest(f"input '{tensor.name}': values must be finite", 400)
    return values


def parse_infer(
    payload: Any, features: list[str], max_rows: int
) -> tuple[InferRequest, np.ndarray]:
    """Validate an OIP inference request and return its ``(rows, features)`` array."""
    try:
        request = InferRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"invalid inference request: {where}: {first['msg']}", 400) from exc
    by_name = {t.name: t for t in request.inputs}
    if len(request.inputs) == 1 and request.inputs[0].name not in features:
        rows = _array(request.inputs[0])
        rows = rows.reshape(1, -1) if rows.ndim == 1 else rows
        if rows.shape[1] != len(features):
            raise InvalidRequest(
                f"input '{request.inputs[0].name}' has {rows.shape[1]} columns; expected"
                f" {len(features)}: {', '.join(features)}",
                400,
            )
    else:
        missing = [f for f in features if f not in by_name]
        extra = sorted(set(by_name) - set(features))
        if missing or extra:
            raise InvalidRequest(
                f"inputs must be one [rows, {len(features)}] tensor or one tensor per feature;"
                f" missing: {missing}, unknown: {extra}",
                400,
            )
        columns = [_array(by_name[f]).reshape(-1) for f in features]
        if len({len(c) for c in columns}) != 1:
            raise InvalidRequest("per-feature inputs must all have the same number of rows", 400)
        rows = np.column_stack(columns)
    if rows.shape[0] == 0:
        raise InvalidRequest("inference request has no rows", 400)
    if rows.shape[0] > max_rows:
        raise InvalidRequest(f"batch of {rows.shape[0]} rows exceeds the limit of {max_rows}", 400)
    return request, rows


def _tensor(name: str, values: np.ndarray) -> dict[str, Any]:
    if values.dtype.kind in "iub":
        datatype = "INT64"
    elif values.dtype.kind == "f":
        datatype = "FP64"
    else:
        datatype = "BYTES"
        values = values.astype(str)
    return {
        "name": name,
        "shape": list(values.shape),
        "datatype": datatype,
        "data": values.reshape(-1).tolist(),
    }


def infer_response(
    model_name: str,
    version: str | None,
    request_id: str,
    variant: str,
    predictions: list[Any],
    probabilities: list[list[float]] | None,
) -> dict[str, Any]:
    outputs = [_tensor("predict", np.asarray(predictions))]
    if probabilities is not None:
        outputs.append(_tensor("predict_proba", np.asarray(probabilities, dtype=np.float64)))
    return {
        "model_name": model_name,
        "model_version": version,
        "id": request_id,
        "parameters": {"variant": variant},
        "outputs": outputs,
    }
