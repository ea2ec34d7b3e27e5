"""Baseline (a): one FastAPI + uvicorn process serving one registered model, the way the
MLflow and FastAPI docs show it.

``mlflow.pyfunc.load_model`` on the registry URI, a pydantic model for the request,
a pandas DataFrame for the model, an ``async def`` endpoint (the fastest single-process
choice: a plain ``def`` would add a thread-pool hop per request) and uvicorn with uvloop and
httptools. It accepts the same bodies as raysplit's ``/predict``: one named record or
``{"instances": [record, ...]}``.

    MODEL_URI=models:/iris@champion python -m bench.baselines.fastapi_server --port 8001
"""

from __future__ import annotations

import argparse
import os

import mlflow.pyfunc
import pandas as pd
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class Iris(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


class Batch(BaseModel):
    instances: list[Iris]


model = mlflow.pyfunc.load_model(os.environ.get("MODEL_URI", "models:/iris@champion"))
app = FastAPI(title="iris baseline")


@app.post("/predict")
async def predict(body: Batch | Iris) -> dict:
    records = body.instances if isinstance(body, Batch) else [body]
    frame = pd.DataFrame([r.model_dump() for r in records])
    return {"predictions": model.predict(frame).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
