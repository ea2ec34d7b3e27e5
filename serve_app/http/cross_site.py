"""Requests another site's page can make a browser send, refused before any route runs.

A page on any site can make the browser of someone who opened the results page send a
form POST or a no-cors ``fetch`` to the ingress; the browser attaches what it holds for
that origin by itself (HTTP Basic credentials after ``GET /ui``). Such a request cannot set
``Authorization: Bearer`` or ``X-API-Key`` (:mod:`serve_app.http.auth` no longer takes Basic on
them), nor a ``Content-Type`` other than a form's or ``text/plain``, and the browser says
where it comes from (``Origin``, ``Sec-Fetch-Site``). Each of the three is checked on its
own, so any one of them stops it, keys on or off (an ingress on loopback without keys is
reachable from every page its user opens).

Pure logic on the request's method, path and headers: :mod:`serve_app.http.guard` applies it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from serve_app.http.auth import SAFE_METHODS

JSON_TYPE = "application/json"
# the Open Inference Protocol's binary tensor extension: its header, which no form or
# no-cors fetch can send, marks a body that is not JSON (serve_app.http.oip_codec)
BINARY_HEADER = "inference-header-content-length"
OIP_PREFIX = "/v2/models/"


def origin_of(scheme: str, host: str | None) -> str | None:
    """The request's own origin, as a browser spells it (default ports dropped)."""
    if not host:
        return None
    host = host.strip().lower()
    default = {"http": ":80", "https": ":443"}.get(scheme)
    if default and host.endswith(default):
        host = host.removesuffix(default)
    return f"{scheme}://{host}"


def cross_site_refusal(
    method: str,
    headers: Mapping[str, str],
    scheme: str = "http",
    allowed_origins: Collection[str] = (),
) -> str | None:
    """Why a request that changes state comes from another site (403), or None.

    GET and HEAD change nothing and are left alone: a link from a chat to ``/ui`` is a
    cross-site navigation. ``allowed_origins`` are sites (``https://ops.example.com``)
    whose pages may call the API, e.g. a dashboard of the operator's own."""
    if method.upper() in SAFE_METHODS:
        return None
    origin = (headers.get("origin") or "").strip().lower()
    if origin and origin in allowed_origins:
        return None
    fetch_site = (headers.get("sec-fetch-site") or "").strip().lower()
    own = origin_of(scheme, headers.get("host"))
    if fetch_site == "cross-site":
        source = origin or "no Origin"
        return f"refused: the browser says this request comes from another site ({source})"
    if origin and origin != own:
        return (
            f"refused: a request from origin {origin} may not change state on {own};"
            " allow it with allowed_origins in the deployment's user_config"
        )
    return None


def content_type_refusal(method: str, headers: Mapping[str, str], path: str = "/") -> str | None:
    """Why a request's body is not one the API takes (415), or None.

    A body must be declared ``application/json``: a form (urlencoded, multipart) and
    ``text/plain`` are what another site's page can send without asking the browser's
    permission first, so the API reads neither, even when the text is valid JSON.

    One exception, for the Open Inference Protocol's own client: tritonclient sends its
    JSON requests to ``/v2/models/...`` with no ``Content-Type`` at all (the protocol
    defines the body as JSON). An undeclared body is taken there; a declared non-JSON one
    is not, and a browser's request from another site is refused by its origin anyway."""
    if method.upper() in SAFE_METHODS or BINARY_HEADER in headers:
        return None
    declared = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if declared == JSON_TYPE:
        return None
    has_body = headers.get("transfer-encoding") or (headers.get("content-length") or "0") != "0"
    if not declared and (not has_body or path.startswith(OIP_PREFIX)):
        return None  # a command without a body (POST /rollout/pause with a bearer key)
    what = f"Content-Type {declared}" if declared else "a body without Content-Type"
    return (
        f"{what} is not accepted: send the body as Content-Type: {JSON_TYPE}"
        " (curl: --json, not -d alone, which sends a form)"
    )
