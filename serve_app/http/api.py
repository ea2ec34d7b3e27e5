"""The ingress's FastAPI application: middleware, error handling and OpenAPI metadata.

Routes are module-level functions in :mod:`serve_app.http.routes`, included here by the
ingress deployment (:mod:`serve_app.app`); each finds the replica serving it through a
dependency (:mod:`serve_app.replica.base` says why they are not methods).
"""

from fastapi import FastAPI

from raysplit.core import __version__
from serve_app.http import errors as http_errors
from serve_app.http import guard
from serve_app.http.fast_lane import FastLane
from serve_app.http.request_log import RequestLog
from serve_app.http.routes import predict

api = FastAPI(
    title="raysplit",
    version=__version__,
    description="Predictions from MLflow-registered scikit-learn models, split between"
    " variants for A/B experiments.",
)

# Keys and limits live in serve_app.http.guard.SETTINGS, reached through the module: Serve ships
# the ingress class by value, so a name imported from there would be a copy the middleware
# never sees.
# innermost: POST /predict skips FastAPI's routing and dependencies, nothing else does
api.add_middleware(FastLane, routes={"/predict": predict.predict})
api.add_middleware(guard.Guard)
api.add_middleware(RequestLog)  # added last, so outermost: refusals are logged too
http_errors.install(api)
