"""The driver of a retrain job: ``python -m tune.retrain`` inside a Ray job.

:func:`raysplit.core.retrain_jobs.submit_retrain` puts the tune config (a mapping) in the
job's environment; this validates it as any ``raysplit tune`` config, insists on what a
retrain needs (production events as the data, a gate on the alias), runs the search on
the cluster it runs in, and prints one outcome line the submitter reads back from the
job's logs. Any failure prints one error line and exits non-zero, so Ray marks the job
FAILED; the alias moves only at the very end of a search that succeeded (see
:func:`tune.registry.register_version`), so a failed job moves none.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pydantic import ValidationError

from raysplit.core.errors import RaysplitError, describe_validation_error
from raysplit.core.retrain_jobs import ERROR_PREFIX, OUTCOME_PREFIX, SPEC_ENV, model_name_of
from raysplit.core.settings import Locations
from tune.config import GateConfig, TuneSpec
from tune.search import SearchOutcome, outcome_lines, run_search


def retrain_spec(raw: dict[str, Any]) -> TuneSpec:
    """``raw`` as a retrain: event-store data, a named model and a gate (the default one
    when the config gives none: a retrain must never move an alias unconditionally)."""
    model_name_of(raw)
    try:
        spec = TuneSpec.model_validate(raw)
    except ValidationError as exc:
        raise RaysplitError(describe_validation_error(exc, "retrain config")) from exc
    if spec.dataset.events is None:
        raise RaysplitError(
            "retrain config: dataset.events is required (a retrain learns from labelled"
            " production predictions); see docs/retraining.md"
        )
    if spec.registration.gate is None:
        registration = spec.registration.model_copy(update={"gate": GateConfig()})
        spec = spec.model_copy(update={"registration": registration})
    return spec


def outcome_record(outcome: SearchOutcome) -> dict[str, Any]:
    """What ``GET /retrain/{job_id}`` shows of a finished retrain."""
    return {
        "model": outcome.model_name,
        "version": outcome.model_version,
        "alias": outcome.alias,
        "promoted": outcome.alias is not None,
        "metric": outcome.metric,
        "test_scores": outcome.test_scores,
        "gate": outcome.gate.model_dump() if outcome.gate else None,
        "events": outcome.events,
        "search_run_id": outcome.parent_run_id,
        "experiment_id": outcome.experiment_id,
    }


def main() -> int:
    try:
        raw = json.loads(os.environ[SPEC_ENV])
        spec = retrain_spec(raw)
        outcome = run_search(spec, Locations.resolve())
    except KeyError:
        print(f"{ERROR_PREFIX}{SPEC_ENV} is not set; submit with `raysplit retrain`", flush=True)
        return 2
    except RaysplitError as exc:
        print(f"{ERROR_PREFIX}{exc}", flush=True)
        return 2
    except Exception as exc:  # MLflow or the store went away mid-search...
        first = str(exc).splitlines()[0][:500] if str(exc) else ""
        print(f"{ERROR_PREFIX}{type(exc).__name__}: {first}", flush=True)
        return 1
    for line in outcome_lines(outcome):
        print(line)
    print(OUTCOME_PREFIX + json.dumps(outcome_record(outcome), default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
