"""The prediction pipeline without Ray: assignment, model call, events, shadows, durable
answers, against real scikit-learn models and a real SQLite event store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from raysplit.eventstore.store import EventStore
from serve_app.config.errors import OverrideDisabled, PredictionFailed, RoutingError
from serve_app.config.ingress import IngressConfig
from serve_app.events.buffer import EventBuffer
from serve_app.predict.batching import JobResult, PredictionJob
from serve_app.predict.models import LoadedModel, ResolvedUri
from serve_app.predict.predictor import Predictor, direct_call
from serve_app.predict.state import ServingState
from serve_app.predict.tally import MetricTally
from tests.events import prediction as event

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
X, Y = load_iris(return_X_y=True)
ROW = X[:1]


class Broken(DummyClassifier):
    """A fitted classifier whose every call fails, as a corrupt model would."""

    def predict_proba(self, X: Any) -> np.ndarray:
        raise ValueError("this model is broken")


def loaded(name: str, version: str, estimator: Any) -> LoadedModel:
    resolved = ResolvedUri(f"models:/{name}/{version}", name, version)
    return LoadedModel(resolved, estimator.fit(X, Y), FEATURES, [0, 1, 2])


MODELS = {
    "champion": loaded("iris", "1", KNeighborsClassifier()),
    "challenger": loaded("iris", "2", LogisticRegression(max_iter=500)),
    "shadow": loaded("iris", "3", DummyClassifier(strategy="most_frequent")),
    "broken": loaded("iris", "4", Broken()),
}


def state(**config: Any) -> ServingState:
    variants = config.pop(
        "variants",
        [
            {"name": "champion", "model_uri": "models:/iris/1", "weight": 50},
            {"name": "challenger", "model_uri": "models:/iris/2", "weight": 50},
        ],
    )
    parsed = IngressConfig.model_validate({"experiment": "unit", "variants": variants, **config})
    return ServingState.build(parsed, {v.name: MODELS[v.name] for v in parsed.variants})


class Pipeline:
    """A predictor wired to a real SQLite event store, as a replica wires it."""

    def __init__(self, tmp_path: Path, draws: list[float] | None = None, **buffer: Any):
        self.store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
        self.tally = MetricTally()
        self.events = EventBuffer(lambda: self.store, interval_s=0.01, **buffer)
        values = iter(draws or [])
        self.predictor = Predictor(
            direct_call, self.events, self.tally, draw=lambda: next(values, 0.0)
        )

    async def done(self) -> None:
        await self.predictor.settle()
        await self.events.close()

    def rows(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["request_id"], r["variant"]): r for r in self.store.recent_predictions(1000)}


def test_the_draw_picks_the_variant_and_the_event_says_what_answered(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path, draws=[0.1, 0.9])

    async def run() -> list[str]:
        pipeline.events.start()
        served = state()
        answers = [
            await pipeline.predictor.predict(served, ROW, f"r{i}", None, None) for i in range(2)
        ]
        await pipeline.done()
        return [a.assignment.variant for a in answers]

    assert asyncio.run(run()) == ["champion", "challenger"]
    rows = pipeline.rows()
    assert rows[("r0", "champion")]["model_version"] == "1"
    assert rows[("r1", "challenger")]["predictions"] == [0]
    assert rows[("r1", "challenger")]["inputs"] == ROW.tolist()
    counted = pipeline.tally.counts["requests"]
    assert counted == {("unit", "champion", "1", "ok"): 1, ("unit", "challenger", "2", "ok"): 1}


def test_forced_and_sticky_requests_route_without_a_draw(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)  # every draw would say champion

    async def run() -> tuple[str, set[str]]:
        served = state()
        forced = await pipeline.predictor.predict(served, ROW, "f", None, "challenger")
        sticky = {
            (await pipeline.predictor.predict(served, ROW, f"s{i}", "alice", None)).assignment
            for i in range(5)
        }
        await pipeline.done()
        return forced.assignment.variant, {a.variant for a in sticky}

    forced, sticky = asyncio.run(run())
    assert forced == "challenger"
    assert len(sticky) == 1  # one user, one variant


def test_routing_errors_carry_their_status_and_run_no_model(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)

    async def run() -> None:
        with pytest.raises(RoutingError, match="not a live variant") as unknown:
            await pipeline.predictor.predict(state(), ROW, "u", None, "nobody")
        assert unknown.value.status == 400
        with pytest.raises(OverrideDisabled) as disabled:
            await pipeline.predictor.predict(
                state(allow_override=False), ROW, "d", None, "champion"
            )
        assert disabled.value.status == 403
        await pipeline.done()

    asyncio.run(run())
    assert pipeline.rows() == {} and not pipeline.tally.counts["requests"]


def test_a_failing_model_is_a_500_recorded_against_its_variant(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    served = state(variants=[{"name": "broken", "model_uri": "models:/iris/4", "weight": 1}])

    async def run() -> None:
        pipeline.events.start()
        with pytest.raises(PredictionFailed, match=r"variant 'broken'.*this model is broken") as e:
            await pipeline.predictor.predict(served, ROW, "b", None, None)
        assert e.value.status == 500 and not e.value.before_model
        await pipeline.done()

    asyncio.run(run())
    row = pipeline.rows()[("b", "broken")]
    assert row["outcome"] == "error" and "this model is broken" in row["error"]
    assert pipeline.tally.counts["requests"] == {("unit", "broken", "4", "error"): 1}


def test_shadows_get_a_copy_after_the_answer_and_agreement_is_counted(tmp_path: Path) -> None:
    pipeline = Pipeline(tmp_path)
    served = state(
        variants=[
            {"name": "champion", "model_uri": "models:/iris/1", "weight": 1},
            {"name": "shadow", "model_uri": "models:/iris/3", "shadow": True},
        ]
    )
    setosa, virginica = X[:1], X[-1:]  # the constant shadow always says class 0

    async def run() -> None:
        pipeline.events.start()
        await pipeline.predictor.predict(served, setosa, "agree", None, None)
        await pipeline.predictor.predict(served, virginica, "differ", None, None)
        await pipeline.done()

    asyncio.run(run())
    rows = pipeline.rows()
    assert rows[("agree", "shadow")]["shadow"] and rows[("differ", "shadow")]["predictions"] == [0]
    assert pipeline.tally.counts["shadow"] == {
        ("unit", "shadow", "true"): 1,
        ("unit", "shadow", "false"): 1,
    }
    # shadow answers are events, never requests of the experiment
    assert set(pipeline.tally.counts["requests"]) == {("unit", "champion", "1", "ok")}


def test_a_durable_answer_says_stored_only_for_its_own_written_event(tmp_path: Path) -> None:
    """A full buffer drops the event: that answer must say queued, not stored."""
    pipeline = Pipeline(tmp_path, capacity=1)
    served = state(durable_events=True, durable_timeout_s=5)

    async def run() -> list[str | None]:
        blocker = pipeline.events.add_prediction(event("blocker"))  # the buffer is now full
        dropped = await pipeline.predictor.predict(served, ROW, "dropped", None, None)
        pipeline.events.start()
        assert await pipeline.events.stored(blocker, timeout_s=5)
        kept = await pipeline.predictor.predict(served, ROW, "kept", None, None)
        await pipeline.done()
        return [kept.event, dropped.event]

    assert asyncio.run(run()) == ["stored", "queued"]
    assert set(pipeline.rows()) == {("blocker", "champion"), ("kept", "champion")}
    assert pipeline.events.dropped == 1


def test_the_model_call_is_handed_in(tmp_path: Path) -> None:
    """The replica hands in Serve's batching; anything with the same signature works."""
    calls: list[int] = []

    async def counting(job: PredictionJob) -> JobResult:
        calls.append(len(job.rows))
        return await direct_call(job)

    pipeline = Pipeline(tmp_path)
    pipeline.predictor = Predictor(counting, pipeline.events, pipeline.tally)

    async def run() -> None:
        await pipeline.predictor.predict(state(), X[:3], "many", None, None)
        await pipeline.done()

    asyncio.run(run())
    assert calls == [3]
