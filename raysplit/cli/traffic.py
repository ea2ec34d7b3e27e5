"""`raysplit traffic`: send sample predictions and show the split.

Rows come from a bundled dataset, or from the user's own CSV/Parquet file (``--data``),
renamed to the served feature names the way `raysplit tune` renamed them. A file is
checked against what the application serves (``GET /models``) before anything is sent:
a file that lacks the model's features, or whose labels are not the model's classes,
would otherwise give a 422 per row, or feedback the server refuses label by label.

Used by `make demo`, and handy after any `serve deploy` to see the experiment answer.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from raysplit.core.errors import RaysplitError

SHOWN = 5  # offending labels named in a refusal


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header the ingress reads an API key from (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def refusal(response: requests.Response) -> RaysplitError:
    """One line for an answer that is not 2xx: URL, status, the ingress's reason, and for
    401/403 which key to send."""
    try:
        body = response.json()
        detail = body.get("detail") or body.get("error") or response.text
    except (ValueError, AttributeError):
        detail = response.text
    detail = " ".join(str(detail).split())[:300]
    where = response.url.split("?")[0]
    hint = "; pass --api-key or set RAYSPLIT_API_KEY" if response.status_code == 401 else ""
    return RaysplitError(
        f"{where} answered {response.status_code} {response.reason}: {detail}{hint}"
    )


def app_url(url: str, app: str | None, timeout: float = 10.0) -> str:
    """The URL of the Serve application ``app`` behind the ingress at ``url``: the ingress
    URL plus the application's route prefix, read from Serve's own route table
    (``GET /-/routes``: ``{prefix: application}``, answered by the proxy without a key).
    Without ``app``, ``url`` itself. Waits up to ``timeout`` for a deploy to publish it."""
    if not app:
        return url
    deadline = time.monotonic() + timeout
    routes: dict[str, str] = {}
    while True:
        try:
            response = requests.get(f"{url}/-/routes", timeout=5)
            routes = response.json() if response.ok else {}
        except requests.RequestException as exc:
            if time.monotonic() > deadline:
                raise RaysplitError(
                    f"cannot reach the ingress at {url}: {type(exc).__name__}"
                ) from exc
        except ValueError:
            routes = {}
        prefixes = sorted(prefix for prefix, name in routes.items() if name == app)
        if prefixes:
            return url.rstrip("/") + prefixes[0].rstrip("/")
        if time.monotonic() > deadline:
            deployed = ", ".join(f"{n} at {p}" for p, n in sorted(routes.items())) or "none"
            raise RaysplitError(
                f"no application '{app}' is deployed behind {url} (deployed: {deployed})"
            )
        time.sleep(1)


def default_dataset(app: str | None) -> str:
    """The bundled dataset to sample rows from: the application's name when it names one
    (the shipped `diabetes` application), else iris."""
    from tune.datasets import BUNDLED

    return app if app in BUNDLED else "iris"


@dataclass(frozen=True)
class Sample:
    """Rows as the served model takes them, each row's truth, and the feedback field the
    truth goes in (``label`` for a classifier, ``value`` for a regressor)."""

    records: list[dict[str, Any]]
    truth: list[Any]
    key: str


@dataclass(frozen=True)
class ServedModel:
    """What ``GET {app}/models`` says the application takes and can answer."""

    features: list[str]
    # every variant's classes, in first-seen order; None: regressors, or a server too old
    # to say (its variants carry no "classes")
    classes: list[Any] | None
    knows_classes: bool  # whether the server said (a regressor says None)

    @classmethod
    def from_models(cls, body: dict[str, Any]) -> ServedModel:
        variants = body.get("variants") or []
        knows = any("classes" in v for v in variants)
        classes: list[Any] = []
        for variant in variants:
            for label in variant.get("classes") or []:
                if label not in classes:
                    classes.append(label)
        return cls(list(body.get("features") or []), classes or None, knows)


def served_model(url: str, auth: dict[str, str] | None) -> ServedModel:
    """The application's features and classes, or the ingress's one-line refusal."""
    try:
        response = requests.get(f"{url}/models", headers=auth, timeout=30)
    except requests.RequestException as exc:
        raise RaysplitError(f"cannot reach {url}/models: {type(exc).__name__}") from exc
    if not response.ok:
        raise refusal(response)
    return ServedModel.from_models(response.json())


def uncovered_features(columns: Iterable[str], features: Iterable[str]) -> list[str]:
    """The model's features the data has no column for, in the model's order."""
    have = set(columns)
    return [f for f in features if f not in have]


def foreign_labels(labels: Iterable[Any], classes: Iterable[Any]) -> list[Any]:
    """The distinct labels that are not among ``classes``, first-seen order.

    Compared as text, as the server compares feedback with a model's classes: ``0`` and
    ``"0"`` agree, ``"class_0"`` does not.
    """
    known = {str(c) for c in classes}
    found: list[Any] = []
    seen: set[str] = set()
    for label in labels:
        text = str(label)
        if text not in known and text not in seen:
            seen.add(text)
            found.append(label)
    return found


def _names(values: Iterable[Any], limit: int | None = None) -> str:
    items = list(values)
    shown = ", ".join(str(v) for v in items[:limit])
    return shown + (f" and {len(items) - limit} more" if limit and len(items) > limit else "")


def file_sample(path: Path, target: str | None, served: ServedModel, feedback: bool) -> Sample:
    """Rows and labels from the user's CSV/Parquet file, read and renamed as `raysplit
    tune` reads a training file, then checked against the served model: one line naming
    what does not fit, instead of a failed request per row. Only the columns the model
    takes are sent and validated, so an id or notes column may stay in the file."""
    from raysplit.core.names import clean_identifiers
    from tune.datasets import Task, infer_task, load_table, validate_table

    if target is None:
        raise RaysplitError(
            f"--data {path.name}: name its label column with --target (as dataset.target"
            " in a tune config)"
        )
    features, labels = load_table(path, target)
    features = features.set_axis(clean_identifiers(features.columns), axis=1)
    missing = uncovered_features(features.columns, served.features)
    if missing:
        raise RaysplitError(
            f"--data {path.name} lacks the served model's feature(s) {_names(missing, 20)};"
            f" its columns, named as served: {_names(features.columns, 20)}"
        )
    features = features[served.features]
    validate_table(features, labels, path.name)
    classifier = (
        served.classes is not None
        if served.knows_classes
        else infer_task(labels) is Task.CLASSIFICATION
    )
    truth = [_plain(v) for v in labels]
    if feedback and classifier and served.classes is not None:
        foreign = foreign_labels(truth, served.classes)
        if foreign:
            shown = ", ".join(repr(v) for v in foreign[:SHOWN])
            more = f" ({len(foreign)} distinct in all)" if len(foreign) > SHOWN else ""
            raise RaysplitError(
                f"--data {path.name}: label(s) {shown}{more} in column '{target}' are not"
                f" the served model's classes: {_names(served.classes)} (compared as text)"
            )
    if feedback and not classifier and not all(_is_number(v) for v in truth):
        raise RaysplitError(
            f"--data {path.name}: the served model is a regressor, but column '{target}'"
            " is not numeric; its feedback is a number"
        )
    records = features.astype("float64").to_dict(orient="records")
    return Sample(records, truth, "label" if classifier else "value")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bundled_sample(name: str) -> Sample:
    """Rows and labels of a bundled dataset, named as `raysplit tune` serves them."""
    from tune.datasets import Task, load_dataset

    data = load_dataset(name)
    key = "label" if data.task is Task.CLASSIFICATION else "value"
    records = data.features.to_dict(orient="records")
    return Sample(records, [_plain(v) for v in data.target], key)


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
    url: str,
    dataset: str | Sample,
    count: int,
    users: int,
    feedback: bool = False,
    auth: dict[str, str] | None = None,
    threads: int = 4,
) -> list[str]:
    """Send ``count`` predictions (every other one with one of ``users`` user ids) and,
    with ``feedback``, the dataset's true label for each one afterwards.

    ``dataset``: a bundled dataset's name, or a :class:`Sample` (``--data``).
    ``auth`` (:func:`auth_headers`) goes with every request. A refused key (401/403) ends
    the command with the ingress's reason instead of a count of failures."""
    sample = bundled_sample(dataset) if isinstance(dataset, str) else dataset
    records = sample.records
    truth: dict[str, object] = {}
    refused: list[requests.Response] = []
    # rows drawn at random, not in the dataset's order: iris is sorted by class, and a
    # variant that got every n-th row would see inputs unlike its training data (a drift
    # guardrail rightly objects to that)
    rows = random.Random().choices(range(len(records)), k=count)

    def one(i: int) -> tuple[int, str, str | None]:
        request_id = f"demo-{uuid.uuid4().hex}"
        truth[request_id] = sample.truth[rows[i]]
        headers = {**(auth or {}), "X-Request-Id": request_id}
        user = f"user-{(i // 2) % users}" if users and i % 2 == 0 else None
        if user:
            headers["X-User-Id"] = user
        response = requests.post(
            f"{url}/predict", json=records[rows[i]], headers=headers, timeout=30
        )
        if response.status_code in (401, 403):
            refused.append(response)
        return response.status_code, response.headers.get("x-variant", "-"), user

    results = [one(0)] if count else []  # alone first: a refused key stops here
    if not refused:
        with ThreadPoolExecutor(threads) as pool:
            results += pool.map(one, range(1, count))
    if refused:
        raise refusal(refused[0])
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
        items = [{"request_id": rid, sample.key: value} for rid, value in truth.items()]
        response = requests.post(f"{url}/feedback", json=items, headers=auth, timeout=60)
        if not response.ok:
            raise refusal(response)
        lines.append(f"  feedback: {response.json().get('accepted')} labels sent")
    return lines


def _plain(value: object) -> object:
    """NumPy scalars to JSON-native values."""
    return value.item() if hasattr(value, "item") else value


def drive_rollout(
    url: str,
    dataset: str | Sample,
    per_round: int,
    users: int,
    auth: dict[str, str] | None,
    timeout_s: float,
) -> Iterator[str]:
    """Send labelled traffic in rounds of ``per_round`` until the deployed rollout ends
    (promoted, rolled back or aborted), yielding a line per decision that moved it: a
    rollout decides only on labelled requests, so sample traffic without feedback would
    hold it forever."""
    sample = bundled_sample(dataset) if isinstance(dataset, str) else dataset  # loaded once
    deadline = time.monotonic() + timeout_s
    began_at = time.time()
    shown = 0
    while True:
        response = requests.get(f"{url}/rollout", headers=auth, timeout=30)
        if not response.ok:
            raise refusal(response)
        view = response.json()
        record = view.get("rollout")
        if view.get("configured") is None:
            raise RaysplitError(f"{url}: the deployed user_config has no rollout block")
        stale = record is not None and (
            record["config"] != view["configured"]
            or (record["phase"] not in ("running", "paused") and record["updated_at"] < began_at)
        )
        if stale:  # a rollout that ended before this command: the deployed one is starting
            record, view["decisions"] = None, []
        moves = [d for d in view["decisions"] if d["kind"] != "hold"]
        for decision in moves[shown:]:
            elapsed = decision["at"] - record["started_at"]  # into the rollout
            yield (
                f"  [{elapsed:5.0f} s] {decision['kind']:<8} step {decision['step'] + 1}:"
                f" {decision['share']:g}% -> {decision['share_after']:g}%  {decision['reason']}"
            )
        shown = len(moves)
        if record is not None and record["phase"] not in ("running", "paused"):
            took = record["updated_at"] - record["started_at"]
            yield f"rollout {record['phase']} {took:.0f} s after it started"
            return
        if time.monotonic() > deadline:
            last = view["decisions"][-1]["reason"] if view["decisions"] else "not started"
            raise RaysplitError(f"no decision within {timeout_s:.0f} s; last: {last}")
        send(url, sample, per_round, users, feedback=True, auth=auth)
