"""Bounded background load for fault tests: a few client threads sending predictions over
real HTTP until stopped, or until a request count or wall-clock cap is reached, keeping
every reply so the test can count errors and find its events afterwards."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from tests.integration.serving import RECORD


@dataclass(frozen=True)
class Sample:
    sent_at: float  # time.monotonic() when the request was sent
    status: int  # 0: no HTTP answer (connection refused/reset, client timeout)
    request_id: str
    replica: str | None
    event: str | None = None  # X-Raysplit-Event: stored or queued (durable_events)


@dataclass
class BackgroundLoad:
    url: str
    prefix: str  # request ids are f"{prefix}-{n}", so the test can find their events
    connections: int = 4
    max_requests: int = 20_000
    max_seconds: float = 180.0
    pause_s: float = 0.0  # per client, between requests
    headers: dict[str, str] = field(default_factory=dict)  # with every request (a key)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self._threads = [threading.Thread(target=self._client) for _ in range(self.connections)]

    def _next_id(self) -> str | None:
        with self._lock:
            if self._issued >= self.max_requests:
                return None
            self._issued += 1
            return f"{self.prefix}-{self._issued}"

    def _client(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            request_id = self._next_id()
            if request_id is None:
                return
            sent = time.monotonic()
            try:
                response = session.post(
                    f"{self.url}/predict",
                    json=RECORD,
                    headers={**self.headers, "X-Request-Id": request_id},
                    timeout=15,
                )
                sample = Sample(
                    sent,
                    response.status_code,
                    request_id,
                    response.headers.get("x-raysplit-replica"),
                    response.headers.get("x-raysplit-event"),
                )
            except requests.RequestException:
                sample = Sample(sent, 0, request_id, None)
                session = requests.Session()
            with self._lock:
                self.samples.append(sample)
            if self.pause_s:
                time.sleep(self.pause_s)

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        return self.samples

    def finished(self) -> bool:
        """Every client has stopped (request cap, time cap or stop())."""
        return not any(thread.is_alive() for thread in self._threads)

    def answered(self) -> int:
        with self._lock:
            return len(self.samples)

    def wait_for(self, count: int, timeout_s: float = 120) -> None:
        """Until ``count`` replies are in (bounded, so a stuck service fails the test)."""
        deadline = time.monotonic() + timeout_s
        while self.answered() < count:
            assert time.monotonic() < deadline, f"only {self.answered()} of {count} replies"
            time.sleep(0.05)

    def failures(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def rate(self, start: float, end: float) -> float:
        """Answered requests per second between two monotonic instants."""
        done = sum(1 for s in self.samples if start <= s.sent_at < end and s.status == 200)
        return done / max(end - start, 1e-9)
