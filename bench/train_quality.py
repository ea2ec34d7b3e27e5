"""Run the default search on each bundled dataset and write the measured figures to docs.

Usage: python bench/train_quality.py --output docs/training.md

Each search uses the shipped defaults (every family of the task, 20 random samples,
5-fold CV, ASHA, 2 concurrent trials at 0.5 CPU) in a throwaway RAYSPLIT_HOME, on one
local Ray instance started here.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import ray

from raysplit.core.settings import Locations
from tune.config import TuneSpec
from tune.search import run_search

DATASETS = ["iris", "wine", "breast_cancer", "digits", "diabetes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    args = parser.parse_args()

    os.environ["RAYSPLIT_HOME"] = tempfile.mkdtemp(prefix="raysplit-bench-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    ray.init(log_to_driver=False)
    rows = []
    for name in args.datasets:
        spec = TuneSpec.model_validate({"dataset": {"name": name}})
        started = time.perf_counter()
        outcome = run_search(spec, Locations.resolve())
        elapsed = time.perf_counter() - started
        test_key = "test_" + outcome.metric
        rows.append(
            f"| {name} | {outcome.metric} | {outcome.best_cv_score:.4f}"
            f" | {outcome.test_scores[test_key]:.4f} | {outcome.best_family}"
            f" | {outcome.trials} | {outcome.early_stopped_trials} | {elapsed:.1f} |"
        )
        print(rows[-1], flush=True)
    ray.shutdown()
    cores = os.cpu_count()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        "# Training: measured search quality and time\n\n"
        "Written by `make bench-train` (`bench/train_quality.py`): the default search"
        " (every family of the task with its default space, 20 random samples, 5-fold CV,"
        " ASHA early stopping, 2 concurrent trials at 0.5 CPU each, seed 0) on each bundled"
        f" dataset, on {cores} cores ({platform.processor() or platform.machine()}),"
        " Ray started once before the first search. Wall time covers the whole"
        " `run_search`: validation, trials, MLflow logging, refit, evaluation,"
        " model logging and registration.\n\n"
        "| dataset | metric | best CV | test split | best family | trials"
        " | stopped early | wall time (s) |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
