"""Open Inference Protocol v2 (KServe, Triton clients): health, metadata and inference.

The experiment's name (or a variant's registered model name) routes by the split; a
variant's own name asks for that variant. Errors answer ``{"error": ...}`` as the
protocol specifies (see :mod:`serve_app.http.errors`).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from serve_app.config.errors import InvalidRequest
from serve_app.http.oip_codec import (
    HEADER_LENGTH,
    binary_outputs,
    infer_response,
    parse_infer,
    split_binary,
)
from serve_app.http.responses import JSONResponse
from serve_app.http.schemas import parse_json, request_id_of
from serve_app.predict.state import ServingState
from serve_app.replica.base import Replica, ReplicaDep

router = APIRouter()


def oip_target(replica: Replica, name: str) -> tuple[ServingState, str | None]:
    """``(state, forced variant)``: the experiment's model name routes by the split."""
    state = replica.serving()
    if name in state.models:
        return state, name
    if name in state.model_names:
        return state, None
    raise InvalidRequest(
        f"unknown model '{name}'; serving {sorted(state.model_names | set(state.models))}",
        404,
    )


@router.get("/v2/health/live")
async def oip_live():
    return {"live": True}


@router.get("/v2/health/ready")
async def oip_ready(replica: ReplicaDep):
    return JSONResponse(
        {"ready": replica.state is not None}, status_code=200 if replica.state else 503
    )


@router.get("/v2/models/{name}")
async def oip_metadata(replica: ReplicaDep, name: str):
    state, forced = oip_target(replica, name)
    variants = [forced] if forced else [v.name for v in state.config.live]
    model = state.models[variants[0]]
    outputs = [{"name": "predict", "datatype": "BYTES" if model.classes else "FP64", "shape": [-1]}]
    if model.classes is not None:
        outputs.append(
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)]}
        )
    return {
        "name": name,
        "versions": sorted({str(state.models[v].resolved.version) for v in variants}),
        "platform": "sklearn",
        "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in state.features],
        "outputs": outputs,
    }


@router.get("/v2/models/{name}/ready")
async def oip_model_ready(replica: ReplicaDep, name: str):
    oip_target(replica, name)
    return {"name": name, "ready": True}


@router.post("/v2/models/{name}/infer")
async def oip_infer(replica: ReplicaDep, name: str, request: Request):
    state, forced = oip_target(replica, name)
    body, blob = await request.body(), None
    if HEADER_LENGTH in request.headers:  # the binary tensor extension
        body, blob = split_binary(body, request.headers[HEADER_LENGTH])
    infer, rows = parse_infer(parse_json(body), state.features, state.config.max_batch_rows, blob)
    request_id = request_id_of(infer.id or request.headers.get("x-request-id"))
    answer = await replica.predictor.predict(
        state,
        rows,
        request_id,
        request.headers.get(state.config.sticky_key),
        forced or request.headers.get("x-variant"),
    )
    payload, binary = infer_response(
        name,
        answer.model.resolved.version,
        request_id,
        answer.assignment.variant,
        answer.predictions,
        answer.probabilities,
        binary_outputs(infer),
    )
    headers = replica.answer_headers(answer)
    if not binary:
        return JSONResponse(payload, headers=headers)
    header = orjson.dumps(payload)
    headers["Inference-Header-Content-Length"] = str(len(header))
    return Response(header + binary, media_type="application/octet-stream", headers=headers)
