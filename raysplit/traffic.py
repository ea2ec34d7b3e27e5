"""`raysplit traffic`: send sample predictions from a bundled dataset and show the split.

Used by `make demo`, and handy after any `serve deploy` to see the experiment answer.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from raysplit.core.errors import RaysplitError


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RaysplitError(f"{url} did not become ready within {timeout:.0f}s (serve status?)")


def send(
    url: str, dataset: str, count: int, users: int, feedback: bool = False, threads: int = 4
) -> list[str]:
    """Send ``count`` predictions (every other one with one of ``users`` user ids) and,
    with ``feedback``, the dataset's true label for each one afterwards."""
    from tune.datasets import load_dataset

    data = load_dataset(dataset)
    records = data.features.to_dict(orient="records")
    truth: dict[str, object] = {}

    def one(i: int) -> tuple[int, str, str | None]:
        request_id = f"demo-{uuid.uuid4().hex}"
        truth[request_id] = data.target.iloc[i % len(records)]
        headers = {"X-Request-Id": request_id}
        user = f"user-{i % users}" if users and i % 2 == 0 else None
        if user:
            headers["X-User-Id"] = user
        response = requests.post(
            f"{url}/predict", json=records[i % len(records)], headers=headers, timeout=30
        )
        return response.status_code, response.headers.get("x-variant", "-"), user

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, range(count)))
    failed = [r for r in results if r[0] != 200]
    counts = Counter(variant for status, variant, _ in results if status == 200)
    sticky: dict[str, set[str]] = {}
    for _, variant, user in results:
        if user:
            sticky.setdefault(user, set()).add(variant)
    lines = [
        f"sent {count} predictions to {url}/predict: {count - len(failed)} ok, {len(failed)} failed"
    ]
    lines += [f"  {variant:<12} {n:>5}  {n / count:6.1%}" for variant, n in counts.most_common()]
    if sticky:
        consistent = sum(len(v) == 1 for v in sticky.values())
        lines.append(f"  sticky users: {consistent}/{len(sticky)} always got the same variant")
    if feedback:
        key = "label" if data.task == "classification" else "value"
        items = [{"request_id": rid, key: _plain(value)} for rid, value in truth.items()]
        answer = requests.post(f"{url}/feedback", json=items, timeout=60).json()
        lines.append(f"  feedback: {answer.get('accepted')} labels sent")
    return lines


def _plain(value: object) -> object:
    """NumPy scalars to JSON-native values."""
    return value.item() if hasattr(value, "item") else value
