"""Baseline (a, tuned): FastAPI the way someone tuning it for throughput would write it.

The registered scikit-learn model loaded directly, once per worker, from the version's
downloaded files with the same safe loader serving uses
(:func:`raysplit.core.model_files.read_model`: skops, no pickle); rows handed to it as a
NumPy array in signature order (no pandas, no pyfunc wrapper); a plain ``def`` endpoint
(FastAPI runs it in its thread pool, so predict never blocks the event loop);
``ORJSONResponse``; and uvicorn with uvloop and httptools, one worker per core. Accepts
the same bodies as raysplit's ``/predict``: one named record or ``{"instances": [...]}``.
No A/B split, events or metrics.

    MODEL_URI=models:/iris@champion uvicorn bench.baselines.fastapi_tuned:app \
        --workers "$(nproc)" --loop uvloop --http httptools --no-access-log --port 8002
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mlflow.artifacts
import numpy as np
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, create_model

from raysplit.core.model_files import read_model

# fitted on DataFrames, served on arrays in signature order (as serving does)
warnings.filterwarnings("ignore", message="X does not have valid feature names")

_files = read_model(
    Path(mlflow.artifacts.download_artifacts(os.environ.get("MODEL_URI", "models:/iris@champion")))
)
model = _files.estimator
FEATURES: list[str] = _files.description.signature.inputs.input_names()

Record = create_model("Record", **{name: (float, ...) for name in FEATURES})


class Batch(BaseModel):
    instances: list[Record]  # type: ignore[valid-type]


app = FastAPI(title="iris tuned baseline", default_response_class=ORJSONResponse)


@app.post("/predict")
def predict(body: Batch | Record) -> ORJSONResponse:  # type: ignore[valid-type]
    records = body.instances if isinstance(body, Batch) else [body]
    rows = np.array([[getattr(r, f) for f in FEATURES] for r in records], dtype=np.float64)
    return ORJSONResponse({"predictions": model.predict(rows).tolist()})
