"""Open Inference Protocol v2 (KServe, Triton clients): health, metadata and inference.

The experiment's name (or a variant's registered model name) routes by the split; a
variant's own name asks for that variant. Errors answer ``{"error": ...}`` as the
protocol specifies (see :mod:`serve_app.http_errors`).
"""

from __future__ import annotations

from fastapi import Request

from serve_app.api import api
from serve_app.errors import InvalidRequest
from serve_app.oip import infer_response, parse_infer
from serve_app.responses import JSONResponse
from serve_app.routes.base import Replica
from serve_app.schemas import parse_json, request_id_of
from serve_app.state import ServingState


class OipRoutes(Replica):
    def _oip_target(self, name: str) -> tuple[ServingState, str | None]:
        """``(state, forced variant)``: the experiment's model name routes by the split."""
        state = self.serving()
        if name in state.models:
            return state, name
        if name in state.model_names:
            return state, None
        raise InvalidRequest(
            f"unknown model '{name}'; serving {sorted(state.model_names | set(state.models))}",
            404,
        )

    @api.get("/v2/health/live")
    async def oip_live(self):
        return {"live": True}

    @api.get("/v2/health/ready")
    async def oip_ready(self):
        return JSONResponse(
            {"ready": self._state is not None}, status_code=200 if self._state else 503
        )

    @api.get("/v2/models/{name}")
    async def oip_metadata(self, name: str):
        state, forced = self._oip_target(name)
        variants = [forced] if forced else [v.name for v in state.config.live]
        model = state.models[variants[0]]
        outputs = [
            {"name": "predict", "datatype": "BYTES" if model.classes else "FP64", "shape": [-1]}
        ]
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

    @api.get("/v2/models/{name}/ready")
    async def oip_model_ready(self, name: str):
        self._oip_target(name)
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def oip_infer(self, name: str, request: Request):
        if "inference-header-content-length" in request.headers:
            raise InvalidRequest(
                "the binary tensor extension is not supported; send JSON tensors"
                " (tritonclient: binary_data=False)",
                400,
            )
        state, forced = self._oip_target(name)
        infer, rows = parse_infer(
            parse_json(await request.body()), state.features, state.config.max_batch_rows
        )
        request_id = request_id_of(infer.id or request.headers.get("x-request-id"))
        answer = await self._predictor.predict(
            state,
            rows,
            request_id,
            request.headers.get(state.config.sticky_key),
            forced or request.headers.get("x-variant"),
        )
        body = infer_response(
            name,
            answer.model.resolved.version,
            request_id,
            answer.assignment.variant,
            answer.predictions,
            answer.probabilities,
        )
        return JSONResponse(body, headers=self.answer_headers(answer))
