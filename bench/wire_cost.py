"""CPU of the wire format alone for one 1000-row OIP request, JSON against the binary
tensor extension: the ingress's own parsing and response building (serve_app.http.oip_codec), timed
in the benchmark's process on the bench's own bodies. It bounds what binary can save: the
rest of a request (the model call, 1000 event rows, Ray's path) is the same either way."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import orjson
from load import IRIS_RECORD, oip_binary_body, oip_json_body

from serve_app.http.oip_codec import binary_outputs, infer_response, parse_infer, split_binary
from serve_app.http.schemas import parse_json

FEATURES = list(IRIS_RECORD)
MAX_ROWS = 10_000


def _cpu_us(call: Callable[[], object], calls: int) -> float:
    call()
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1e6


def wire_cost_us(calls: int = 300) -> dict[str, float]:
    """CPU microseconds per request of decoding and validating the body (``*_in``) and of
    building and encoding the answer (``*_out``), for JSON and binary, and both bodies'
    sizes in bytes."""
    json_body = orjson.dumps(oip_json_body())
    binary_body, header_length = oip_binary_body()
    rows = len(oip_json_body()["inputs"][0]["data"]) // len(FEATURES)
    labels = ["setosa", "versicolor", "virginica"]
    predictions = [labels[i % 3] for i in range(rows)]
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), rows).tolist()

    def json_in():
        return parse_infer(parse_json(json_body), FEATURES, MAX_ROWS)[0]

    def binary_in():
        header, blob = split_binary(binary_body, str(header_length))
        return parse_infer(parse_json(header), FEATURES, MAX_ROWS, blob)[0]

    def answer(request) -> bytes:
        payload, blob = infer_response(
            "iris", "1", "id", "champion", predictions, probabilities, binary_outputs(request)
        )
        return orjson.dumps(payload) + blob

    json_request, binary_request = json_in(), binary_in()
    return {
        "json_in": _cpu_us(json_in, calls),
        "binary_in": _cpu_us(binary_in, calls),
        "json_out": _cpu_us(lambda: answer(json_request), calls),
        "binary_out": _cpu_us(lambda: answer(binary_request), calls),
        "json_bytes": len(json_body),
        "binary_bytes": len(binary_body),
    }


if __name__ == "__main__":
    print({k: round(v) for k, v in wire_cost_us().items()})
