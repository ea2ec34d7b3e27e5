"""One model call for many concurrent requests: the work behind ``@serve.batch``.

scikit-learn spends about the same time per call on validation and pipeline steps whatever
the row count (docs/architecture.md, "Batching concurrent single rows"), so under load the
ingress stacks the rows of the requests waiting at the same moment, calls each variant once
and splits the answers. This module is the pure
part (no Ray): grouping, splitting and isolating a failure to the request that caused it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from serve_app.predict.models import LoadedModel, Output


@dataclass(frozen=True)
class PredictionJob:
    """One request's rows for one variant's model."""

    model: LoadedModel
    rows: np.ndarray


@dataclass(frozen=True)
class JobResult:
    """What the model said for one job, or why it could not; ``latency_ms`` is the model
    call that answered it (shared by every job in that call)."""

    output: Output | None
    error: Exception | None
    latency_ms: float


def _timed(model: LoadedModel, rows: np.ndarray) -> tuple[Output, float]:
    started = time.perf_counter()
    output = model.predict(rows)
    return output, (time.perf_counter() - started) * 1000


def _alone(job: PredictionJob) -> JobResult:
    started = time.perf_counter()
    try:
        output = job.model.predict(job.rows)
    except Exception as exc:  # reported against this job's variant by the caller
        output, error = None, exc
    else:
        error = None
    return JobResult(output, error, (time.perf_counter() - started) * 1000)


def run_jobs(jobs: list[PredictionJob]) -> list[JobResult]:
    """Answer every job, one model call per distinct model where possible.

    If a stacked call raises, that model's jobs are retried one by one, so a request
    whose input breaks the model fails alone instead of failing its neighbours.
    """
    results: list[JobResult | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(id(job.model), []).append(index)
    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = _alone(jobs[indices[0]])
            continue
        model = jobs[indices[0]].model
        try:
            (predictions, probabilities), latency = _timed(
                model, np.concatenate([jobs[i].rows for i in indices])
            )
        except Exception:
            for i in indices:
                results[i] = _alone(jobs[i])
            continue
        ends = list(accumulate(len(jobs[i].rows) for i in indices))
        for i, start, end in zip(indices, [0, *ends[:-1]], ends, strict=True):
            output = (
                predictions[start:end],
                None if probabilities is None else probabilities[start:end],
            )
            results[i] = JobResult(output, None, latency)
    return results  # type: ignore[return-value]  # every index was filled above
