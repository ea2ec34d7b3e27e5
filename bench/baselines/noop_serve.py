"""Ray's ceiling: a Serve application that does nothing but answer.

Deployed by the benchmark on raysplit's own cluster (HAProxy fast path,
throughput-optimised Serve), behind the same HTTP port, as an application of its own at
the ``/noop`` route prefix, with the ingress's ``max_ongoing_requests`` and autoscaling
(the benchmark's serve config sets them). A plain ``__call__`` reads the body and returns
a constant prediction-shaped JSON: no FastAPI routing, parsing, model or event, so no
Serve application can serve more on this cluster, and raysplit's throughput as a share of
this one is the share of Ray's capacity left after doing the work.
"""

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

BODY = b'{"predictions":["setosa"]}'


@serve.deployment(name="Noop", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class Noop:
    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(BODY, media_type="application/json")


app = Noop.bind()
