"""The rules that keep another site's page from acting with an operator's browser: each
vector a page can make a browser send (a form POST, a no-cors fetch, text/plain), and the
same request from a client that may send it."""

from __future__ import annotations

import pytest

from serve_app.http.cross_site import content_type_refusal, cross_site_refusal, origin_of

HOST = {"host": "127.0.0.1:8000"}


@pytest.mark.parametrize(
    "headers",
    [
        # an HTML form on evil.example: the browser says where it comes from
        {**HOST, "origin": "http://evil.example", "sec-fetch-site": "cross-site"},
        # an older browser without Fetch Metadata: Origin alone
        {**HOST, "origin": "http://evil.example"},
        # Fetch Metadata alone (a proxy dropped Origin)
        {**HOST, "sec-fetch-site": "cross-site"},
        # a sandboxed iframe or a file:// page: the opaque origin
        {**HOST, "origin": "null"},
        # the same host on another port is another origin
        {**HOST, "origin": "http://127.0.0.1:9000"},
        {**HOST, "origin": "https://127.0.0.1:8000"},
    ],
)
def test_a_state_change_from_another_site_is_refused(headers: dict[str, str]) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert cross_site_refusal(method, headers) is not None


@pytest.mark.parametrize(
    "headers",
    [
        {**HOST},  # curl, requests, the CLI: no Origin, no Fetch Metadata
        {**HOST, "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"},
        {"host": "ingress.example.com", "origin": "https://ingress.example.com"},
        {"host": "ingress.example.com:443", "origin": "https://ingress.example.com"},
        {**HOST, "sec-fetch-site": "none"},  # typed into the address bar
    ],
)
def test_a_state_change_from_the_same_origin_or_no_browser_passes(headers: dict) -> None:
    scheme = "https" if "https" in headers.get("origin", "") else "http"
    assert cross_site_refusal("POST", headers, scheme) is None


def test_reads_are_left_alone_so_a_link_to_the_page_works() -> None:
    headers = {**HOST, "origin": "http://evil.example", "sec-fetch-site": "cross-site"}
    assert cross_site_refusal("GET", headers) is None
    assert cross_site_refusal("HEAD", headers) is None


def test_an_allowed_origin_may_change_state_and_says_how_to_allow_one() -> None:
    headers = {**HOST, "origin": "https://ops.example.com", "sec-fetch-site": "cross-site"}
    assert cross_site_refusal("POST", headers, allowed_origins={"https://ops.example.com"}) is None
    message = cross_site_refusal("POST", {**HOST, "origin": "https://ops.example.com"})
    assert message is not None and "allowed_origins" in message


def test_origins_are_spelt_as_browsers_spell_them() -> None:
    assert origin_of("http", "Example.COM:80") == "http://example.com"
    assert origin_of("https", "example.com:443") == "https://example.com"
    assert origin_of("http", "127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert origin_of("http", None) is None


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"content-type": "application/json", "content-length": "12"}, False),
        ({"content-type": "application/json; charset=utf-8", "content-length": "12"}, False),
        ({"content-type": "Application/JSON", "content-length": "12"}, False),
        # what a form or a no-cors fetch can send
        ({"content-type": "application/x-www-form-urlencoded", "content-length": "0"}, True),
        ({"content-type": "multipart/form-data; boundary=x", "content-length": "40"}, True),
        ({"content-type": "text/plain", "content-length": "30"}, True),
        ({"content-type": "text/plain;charset=UTF-8", "content-length": "30"}, True),
        # a body nobody declared
        ({"content-length": "30"}, True),
        ({"transfer-encoding": "chunked"}, True),
        # a command without a body (POST /rollout/pause with a bearer key)
        ({}, False),
        ({"content-length": "0"}, False),
        # the Open Inference Protocol's binary tensors: a header no form can set
        ({"inference-header-content-length": "120", "content-length": "200"}, False),
    ],
)
def test_bodies_must_be_declared_json(headers: dict[str, str], refused: bool) -> None:
    message = content_type_refusal("POST", headers)
    assert (message is not None) is refused, message
    if refused:
        assert "Content-Type: application/json" in message


def test_the_inference_protocols_own_client_may_leave_its_json_undeclared() -> None:
    """tritonclient sends JSON inference requests without a Content-Type."""
    undeclared = {"content-length": "80"}
    assert content_type_refusal("POST", undeclared, "/v2/models/iris/infer") is None
    assert content_type_refusal("POST", undeclared, "/predict") is not None
    text = {"content-type": "text/plain", "content-length": "80"}
    assert content_type_refusal("POST", text, "/v2/models/iris/infer") is not None


def test_reads_need_no_content_type() -> None:
    assert content_type_refusal("GET", {"content-type": "text/plain"}) is None
