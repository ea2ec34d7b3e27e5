"""Open Inference Protocol (v2 REST) tensors to feature rows and predictions back.

Accepted inputs: one tensor of shape ``[rows, features]`` (or ``[features]`` for one row)
in signature order, or one tensor per feature, named after it, of shape ``[rows]`` or
``[rows, 1]``. Outputs: ``predict`` and, for classifiers, ``predict_proba``.

The binary tensor extension (what ``tritonclient`` sends and asks for by default) is
supported both ways: the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by each binary input's raw little-endian data (its size in the tensor's
``binary_data_size`` parameter); outputs asked for with ``binary_data`` (or every output
with the request's ``binary_data_output``) come back the same way. 1000-row FP64 batches
then skip a JSON number per value each way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from serve_app.config.errors import InvalidRequest
from serve_app.http.schemas import SHOWN_NAMES, rename_hint

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


# the extension's fixed-size types, little-endian as the protocol specifies
BINARY_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
HEADER_LENGTH = "inference-header-content-length"


class InferTensor(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=2)
    datatype: str
    data: list[Any] | None = Field(None, description="absent when sent as binary data")
    parameters: dict[str, Any] | None = None
    binary: bytes | None = Field(None, exclude=True, description="set by split_binary")


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


def split_binary(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """The JSON header and the binary part of a binary-extension request body."""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidRequest(
            f"Inference-Header-Content-Length '{header_length}' is not a number", 400
        ) from None
    if not 0 < length <= len(body):
        raise InvalidRequest(
            f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes",
            400,
        )
    return body[:length], body[length:]


def _attach_binary(request: InferRequest, blob: bytes) -> None:
    """Hand each binary input its slice of ``blob``, in input order."""
    offset = 0
    for tensor in request.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(blob):
            raise InvalidRequest(
                f"input '{tensor.name}': binary_data_size {size!r} does not fit the"
                f" {len(blob) - offset} bytes left in the body",
                400,
            )
        tensor.binary = blob[offset : offset + size]
        offset += size
    if offset != len(blob):
        raise InvalidRequest(
            f"the body has {len(blob) - offset} bytes after the binary inputs' data", 400
        )


def _array(tensor: InferTensor) -> np.ndarray:
    if tensor.datatype not in NUMERIC:
        raise InvalidRequest(
            f"input '{tensor.name}': datatype {tensor.datatype} is not numeric", 400
        )
    if tensor.binary is not None:
        return _binary_array(tensor)
    if tensor.data is None:
        raise InvalidRequest(f"input '{tensor.name}' has neither data nor binary_data_size", 400)
    try:
        values = np.asarray(tensor.data, dtype=np.float64).reshape(tensor.shape)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"input '{tensor.name}': data does not fit shape {tensor.shape}: {exc}", 400
        ) from exc
    if not np.all(np.isfinite(values)):
        raise InvalidRequest(f"input '{tensor.name}': values must be finite", 400)
    return values


def _binary_array(tensor: InferTensor) -> np.ndarray:
    dtype = np.dtype(BINARY_DTYPES[tensor.datatype])
    expected = int(np.prod(tensor.shape)) * dtype.itemsize
    if len(tensor.binary) != expected:
        raise InvalidRequest(
            f"input '{tensor.name}': {len(tensor.binary)} bytes of binary data; shape"
            f" {tensor.shape} of {tensor.datatype} needs {expected}",
            400,
        )
    values = np.frombuffer(tensor.binary, dtype=dtype).reshape(tensor.shape).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidRequest(f"input '{tensor.name}': values must be finite", 400)
    return values


def parse_infer(
    payload: Any, features: list[str], max_rows: int, binary: bytes | None = None
) -> tuple[InferRequest, np.ndarray]:
    """Validate an OIP inference request and return its ``(rows, features)`` array.
    ``binary``: the body after the JSON header, for the binary tensor extension."""
    try:
        request = InferRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"invalid inference request: {where}: {first['msg']}", 400) from exc
    _attach_binary(request, binary or b"")
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
                f" missing: {missing[:SHOWN_NAMES]}, unknown: {extra[:SHOWN_NAMES]}"
                f"{rename_hint(extra, features)}",
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


def _datatype(values: np.ndarray) -> str:
    if values.dtype.kind in "iub":
        return "INT64"
    return "FP64" if values.dtype.kind == "f" else "BYTES"


def _tensor(name: str, values: np.ndarray) -> dict[str, Any]:
    datatype = _datatype(values)
    flat = values.reshape(-1)
    return {
        "name": name,
        "shape": list(values.shape),
        "datatype": datatype,
        "data": (flat.astype(str) if datatype == "BYTES" else flat).tolist(),
    }


def _binary_tensor(name: str, values: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """``values`` as a tensor whose data follows the JSON: raw little-endian values, or
    for BYTES each element as a 4-byte little-endian length and its UTF-8 bytes (each
    distinct label is encoded once: a batch's thousand labels are a handful of classes)."""
    datatype = _datatype(values)
    if datatype == "BYTES":
        labels, inverse = np.unique(values.reshape(-1).astype(str), return_inverse=True)
        encoded = [str(label).encode() for label in labels]
        framed = [len(e).to_bytes(4, "little") + e for e in encoded]
        blob = b"".join([framed[i] for i in inverse.tolist()])
    else:
        blob = values.astype(BINARY_DTYPES[datatype]).tobytes()
    tensor = {
        "name": name,
        "shape": list(values.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(blob)},
    }
    return tensor, blob


def binary_outputs(request: InferRequest) -> set[str]:
    """Outputs the client asked to get as binary data."""
    everything = bool((request.parameters or {}).get("binary_data_output"))
    names = {"predict", "predict_proba"}
    if request.outputs is None:
        return names if everything else set()
    return {
        o.get("name")
        for o in request.outputs
        if (o.get("parameters") or {}).get("binary_data", everything)
    } & names


def infer_response(
    model_name: str,
    version: str | None,
    request_id: str,
    variant: str,
    predictions: list[Any],
    probabilities: list[list[float]] | None,
    binary: set[str] = frozenset(),
) -> tuple[dict[str, Any], bytes]:
    """The response's JSON and, for outputs in ``binary``, their data to send after it."""
    values = {"predict": np.asarray(predictions)}
    if probabilities is not None:
        values["predict_proba"] = np.asarray(probabilities, dtype=np.float64)
    outputs, blobs = [], []
    for name, array in values.items():
        if name in binary:
            tensor, blob = _binary_tensor(name, array)
            blobs.append(blob)
        else:
            tensor = _tensor(name, array)
        outputs.append(tensor)
    body = {
        "model_name": model_name,
        "model_version": version,
        "id": request_id,
        "parameters": {"variant": variant},
        "outputs": outputs,
    }
    return body, b"".join(blobs)
