"""Baseline (the yardstick): FastAPI serving the registered version's verified ONNX graph.

What a careful engineer would run who converted the model to ONNX and wanted it fast: the
same ``model.onnx`` raysplit serves (refused unless training verified it, as serving
refuses it), one ONNX Runtime session per worker with one thread (the workers are the
parallelism), an ``async def`` endpoint reading the body with orjson into a float32 row
in signature order, an orjson response, and uvicorn with uvloop and httptools, one worker
per core. Accepts the same bodies as raysplit's ``/predict``: one named record or
``{"instances": [...]}``; a missing feature answers 400 naming it. No A/B split, events
or metrics.

    MODEL_URI=models:/iris@champion uvicorn bench.baselines.fastapi_onnx:app \
        --workers "$(nproc)" --loop uvloop --http httptools --no-access-log --port 8003
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow.artifacts
import numpy as np
import onnxruntime
import orjson
from fastapi import FastAPI, Request, Response

from raysplit.core.model_files import read_model
from raysplit.core.onnx_check import ONNX_CHECK_FILE, ONNX_FILE, OnnxCheck

_local = Path(
    mlflow.artifacts.download_artifacts(os.environ.get("MODEL_URI", "models:/iris@champion"))
)
_extra = _local / "extra_files"  # where training logs the graph and its verdict
if not OnnxCheck.model_validate_json((_extra / ONNX_CHECK_FILE).read_text()).verified:
    raise SystemExit(f"{_extra / ONNX_FILE} is not a verified conversion: serving would refuse it")
FEATURES: list[str] = read_model(_local).description.signature.inputs.input_names()

_options = onnxruntime.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(
    (_extra / ONNX_FILE).read_bytes(), sess_options=_options, providers=["CPUExecutionProvider"]
)
INPUT = session.get_inputs()[0].name
LABELS = session.get_outputs()[0].name

app = FastAPI(title="iris ONNX baseline")


def _error(detail: str) -> Response:
    body = orjson.dumps({"detail": detail})
    return Response(body, status_code=400, media_type="application/json")


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        records = body.get("instances", [body])
        rows = np.array([[r[f] for f in FEATURES] for r in records], dtype=np.float32)
    except orjson.JSONDecodeError:
        return _error("the body is not JSON")
    except KeyError as missing:
        return _error(f"missing feature(s): {missing.args[0]}")
    except (AttributeError, TypeError, ValueError):
        return _error("every feature must be a number")
    (labels,) = session.run([LABELS], {INPUT: rows})
    return Response(orjson.dumps({"predictions": labels.tolist()}), media_type="application/json")
