"""Hostile input against a real deployment: fuzzing from the API's own OpenAPI schema,
oversized and endless bodies, batches over the row limit, absurd JSON, slow clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.serving import RECORD, Deployer, user_config

pytestmark = pytest.mark.integration

LIMITS = {"max_body_bytes": 65_536, "body_timeout_s": 2, "max_batch_rows": 100}
EXAMPLES_PER_MODE = 120  # 8 operations take input; small spaces yield fewer examples


@pytest.fixture(scope="module")
def limited(deployer: Deployer) -> Deployer:
    deployer.deploy(user_config(**LIMITS))  # left running: the next test deploys what it needs
    return deployer


def explains(response: requests.Response) -> bool:
    """A 4xx body that says what was wrong: JSON with a non-empty detail or error."""
    try:
        body = response.json()
    except ValueError:
        return False
    reason = body.get("detail") or body.get("error") if isinstance(body, dict) else None
    return bool(reason)


def test_fuzzing_from_the_openapi_schema_finds_no_5xx_and_every_4xx_explains(
    limited: Deployer,
) -> None:
    schema = schemathesis.openapi.from_url(f"{limited.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13, [op.label for op in operations]
    session = requests.Session()
    sent: list[tuple[str, int]] = []
    problems: list[str] = []

    def check(case: Any) -> None:
        try:
            response = case.call(base_url=limited.url, session=session, timeout=15)
        except requests.Timeout:  # a hang: recorded, not raised, so every case still runs
            problems.append(f"{case.operation.label}: no answer within 15 s")
            return
        sent.append((case.operation.label, response.status_code))
        if response.status_code >= 500:
            problems.append(f"{case.operation.label}: {response.status_code} {response.text[:200]}")
        elif response.status_code >= 400 and not explains(response):
            problems.append(f"{case.operation.label}: bare {response.status_code}")

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                check(case)

            try:
                run()
            except Unsatisfiable:  # nothing to get wrong: an operation that takes no input
                assert mode is GenerationMode.NEGATIVE
    statuses = sorted({s for _, s in sent})
    print(f"fuzzing: {len(sent)} requests over {len(operations)} operations, statuses {statuses}")
    assert not problems, problems[:10]
    assert len(sent) >= 1000


def raw_exchange(port: int, head: bytes, body_parts: list[bytes], pause_s: float = 0) -> bytes:
    """Send a request by hand (to control timing and size) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
            time.sleep(pause_s)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in data:
                break
        return b"".join(chunks)


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body[body.index(b"{") :])


def test_an_oversized_body_is_refused_with_413_from_its_length_alone(limited: Deployer) -> None:
    body = orjson.dumps({"instances": [list(RECORD.values())] * 4000})  # ~90 KB > 64 KiB
    response = requests.post(
        f"{limited.url}/predict",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert "exceeds the limit of 65536 bytes" in response.json()["detail"]


def test_a_chunked_body_is_cut_off_once_it_crosses_the_limit(limited: Deployer) -> None:
    def endless() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(5000):  # 105 KB, past the 64 KiB limit
            yield b"[5.1, 3.5, 1.4, 0.2],"

    response = requests.post(
        f"{limited.url}/predict",
        data=endless(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert "exceeds the limit" in response.json()["detail"]


def test_a_batch_over_the_row_limit_is_422(limited: Deployer) -> None:
    reply = limited.predict({"instances": [RECORD] * 101})
    assert reply.status == 422
    assert "batch of 101 rows exceeds the limit of 100" in reply.body["detail"]


ABSURD = {
    "deep nesting": b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "huge integer": b'{"sepal_length": 1' + b"0" * 400 + b', "sepal_width": 1,'
    b' "petal_length": 1, "petal_width": 1}',
    "huge float": b'{"sepal_length": 1e999, "sepal_width": 1, "petal_length": 1, "petal_width": 1}',
    "duplicate keys": b'{"sepal_length": 1, "sepal_length": "x", "sepal_width": 1,'
    b' "petal_length": 1, "petal_width": 1}',
    "not utf-8": b'{"sepal_length": "\xff\xfe"}',
}


@pytest.mark.parametrize("case", ABSURD)
def test_absurd_json_gets_a_4xx_that_explains(limited: Deployer, case: str) -> None:
    response = requests.post(
        f"{limited.url}/predict",
        data=ABSURD[case],
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert explains(response), response.text[:300]
    assert limited.predict(RECORD).status == 200  # and the replica is fine afterwards


def test_a_client_that_stops_sending_its_body_gets_408(limited: Deployer) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n"
    )
    raw = raw_exchange(limited.port, head, [b'{"sepal_length": 5.1, '])  # then nothing more
    status, body = status_and_body(raw)
    assert status == 408, raw[:300]
    assert "did not arrive within 2 s" in body["detail"]
    assert limited.predict(RECORD).status == 200
