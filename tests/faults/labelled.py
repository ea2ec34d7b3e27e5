"""Labelled traffic for the rollout fault tests: predictions of random iris rows over real
HTTP that keep going through the connection errors a killed replica causes (counted, not
raised: ``raysplit traffic`` stops at the first), and their true labels posted as
feedback afterwards, as a labelling pipeline delivers them."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from tests.models import iris

X, Y = iris()
RECORDS = X.to_dict(orient="records")
LABELS = list(Y)


@dataclass
class Round:
    labels: dict[str, str] = field(default_factory=dict)  # answered request id -> true label
    statuses: Counter = field(default_factory=Counter)  # 0: no HTTP answer

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


def predict(url: str, count: int, prefix: str, threads: int = 4) -> Round:
    """``count`` predictions of random iris rows (random, not in the dataset's order: iris
    is sorted by class); every answer and failure is kept."""
    rows = random.Random().choices(range(len(RECORDS)), k=count)
    result = Round()

    def one(i: int) -> tuple[int, str, str]:
        request_id = f"{prefix}-{uuid.uuid4().hex[:12]}"
        try:
            response = requests.post(
                f"{url}/predict",
                json=RECORDS[rows[i]],
                headers={"X-Request-Id": request_id},
                timeout=30,
            )
            status = response.status_code
        except requests.RequestException:
            status = 0
        return status, request_id, LABELS[rows[i]]

    with ThreadPoolExecutor(threads) as pool:
        for status, request_id, label in pool.map(one, range(count)):
            result.statuses[status] += 1
            if status == 200:
                result.labels[request_id] = label
    return result


def post_feedback(url: str, labels: dict[str, str], timeout_s: float = 90) -> list[int]:
    """Post every label, retrying until the ingress takes them (POST /feedback reads the
    event store, so it refuses while the store is down); the statuses it answered."""
    items = [{"request_id": rid, "label": label} for rid, label in labels.items()]
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = requests.post(f"{url}/feedback", json=items, timeout=30)
            seen.append(response.status_code)
            if response.ok:
                return seen
        except requests.RequestException:
            seen.append(0)
        assert time.monotonic() < deadline, f"feedback never accepted: statuses {seen}"
        time.sleep(0.5)
