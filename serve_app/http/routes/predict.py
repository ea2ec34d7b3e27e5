"""``POST /predict``: one record or many, answered by the variant the split assigns."""

from __future__ import annotations

from fastapi import APIRouter, Request

from serve_app.http.responses import JSONResponse
from serve_app.http.schemas import (
    PredictRequestDoc,
    PredictResponse,
    parse_instances,
    parse_json,
    request_id_of,
)
from serve_app.replica.base import ReplicaDep

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": {"type": "number"}},
                        PredictRequestDoc.model_json_schema(),
                    ]
                }
            }
        },
    }
}


router = APIRouter()


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra=PREDICT_BODY,
    summary="Predict with the variant the traffic split assigns",
)
async def predict(replica: ReplicaDep, request: Request):
    request_id = request_id_of(request.headers.get("x-request-id"))
    state = replica.serving()
    rows = parse_instances(
        parse_json(await request.body()), state.features, state.config.max_batch_rows
    )
    answer = await replica.predictor.predict(
        state,
        rows,
        request_id,
        request.headers.get(state.config.sticky_key),
        request.headers.get("x-variant"),
    )
    body = {
        "request_id": request_id,
        "variant": answer.assignment.variant,
        "model": {"name": answer.model.resolved.name, "version": answer.model.resolved.version},
        "predictions": answer.predictions,
    }
    if answer.probabilities is not None:
        body["classes"] = answer.model.classes
        body["probabilities"] = answer.probabilities
    return JSONResponse(body, headers=replica.answer_headers(answer))
