"""Baseline (b): the textbook Ray Serve composition for an A/B split.

A router deployment (FastAPI ingress) picks a variant by weight and calls one model
deployment per registered version through deployment handles, as the Ray Serve model
composition guide shows; each model deployment loads its version with
``mlflow.pyfunc.load_model``. Served through Ray's default proxy (a cluster started with
``raysplit up --no-fast-path``), under the route prefix the benchmark gives it.

``max_ongoing_requests`` is raised to raysplit's 64: with Serve's default of 5 the router
rejected most of 32 connections' requests and the proxy's retries left 11 req/s (measured
here), which would compare against a misconfiguration rather than the design.
"""

import random

import mlflow.pyfunc
import pandas as pd
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle


class Iris(BaseModel):
    sepal_length: float
    sepal_width: float
    petal_length: float
    petal_width: float


class Batch(BaseModel):
    instances: list[Iris]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class ModelVersion:
    def __init__(self, model_uri: str) -> None:
        self.model = mlflow.pyfunc.load_model(model_uri)

    async def predict(self, records: list[dict]) -> list:
        return self.model.predict(pd.DataFrame(records)).tolist()


api = FastAPI(title="textbook A/B router")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class Router:
    def __init__(self, champion: DeploymentHandle, challenger: DeploymentHandle) -> None:
        self.variants = {"champion": champion, "challenger": challenger}
        self.weights = {"champion": 90, "challenger": 10}

    @api.post("/predict")
    async def predict(self, body: Batch | Iris) -> dict:
        records = body.instances if isinstance(body, Batch) else [body]
        variant = random.choices(list(self.weights), weights=list(self.weights.values()))[0]
        predictions = await self.variants[variant].predict.remote([r.model_dump() for r in records])
        return {"variant": variant, "predictions": predictions}


app = Router.bind(
    ModelVersion.options(name="champion").bind("models:/iris@champion"),
    ModelVersion.options(name="challenger").bind("models:/iris@challenger"),
)
