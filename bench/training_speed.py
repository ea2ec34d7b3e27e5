"""Training speed: trials per minute by concurrency, and what ASHA early stopping saves.

Usage: python bench/training_speed.py --output docs/training_speed.md

One local Ray instance is started here, once, so Ray's start-up is not in any figure. Each
search then goes through the package's own ``run_search`` (exactly what ``raysplit tune``
runs) in a throw-away RAYSPLIT_HOME with its own embedded MLflow store, removed afterwards.

Two measurements, each setting repeated and interleaved with the others so slow drift of
a shared machine hits all of them alike (tables give medians and min-max):

1. The default iris search (tune/configs/iris.yaml, 20 trials, ASHA) at
   max_concurrent_trials 1 and 2, with one CPU per trial so two trials can really run at
   once on two cores.
2. A heavier dataset (digits by default) with ASHA against early_stopping none: same
   space, seed and samples, so the same candidates are drawn; what differs is how many
   folds are fitted, the wall time, and whether the best CV score moves.

The wall time of the Tune run alone is ``SearchOutcome.search_seconds``; validation,
MLflow set-up, refit and registration are in the whole ``run_search`` time. Other
processes' CPU use is sampled throughout, because this machine is shared and a busy
neighbour would slow every figure here.

About 450 lines because the two measurements share the interleaving, the CPU sampling and
the table rendering; splitting them would repeat those.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
import ray
from mlflow import MlflowClient

from raysplit.core.settings import Locations
from tune.config import load_spec
from tune.search import run_search

REPO = Path(__file__).resolve().parent.parent
IRIS_CONFIG = REPO / "tune" / "configs" / "iris.yaml"
SAME_SCORE = 0.01


@dataclass(frozen=True)
class SearchRun:
    """The figures of one search; every field is measured, none derived from settings."""

    setting: str
    tune_seconds: float  # Tuner.fit() alone
    total_seconds: float  # the whole run_search
    trials: int
    early_stopped: int  # child runs tagged raysplit.early_stopped=true
    folds_fitted: int  # sum of folds each trial completed
    trial_seconds: float  # sum of the trials' MLflow run durations
    fit_seconds: float  # sum of model.fit time over trials (the fit_time_s metric)
    best_cv: float
    best_family: str
    peak_running: int  # most trials whose child runs overlapped in time
    candidates: frozenset[str]
    foreign_cpu_share: float  # other processes' CPU over the search, share of all cores

    @property
    def trials_per_minute(self) -> float:
        """Throughput of the Tune run alone, the figure the issue asks for."""
        return self.trials / self.tune_seconds * 60


class ForeignCpu:
    """CPU time used by processes outside this script's process tree, sampled in a thread.

    Ray's workers, raylet and GCS started by ``ray.init`` here are descendants of this
    process, so whatever is left is someone else's load on the shared cores.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.cpu_seconds = 0.0
        self._last: dict[tuple[int, float], float] = {}
        self._started = time.time()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ForeignCpu:
        self._sample(count=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(count=True)

    def _sample(self, count: bool) -> None:
        processes = list(psutil.process_iter(["pid", "ppid", "create_time", "cpu_times"]))
        children: dict[int, list[int]] = {}
        for process in processes:
            children.setdefault(process.info["ppid"], []).append(process.info["pid"])
        ours, stack = set(), [os.getpid()]
        while stack:
            pid = stack.pop()
            ours.add(pid)
            stack.extend(children.get(pid, []))
        added = 0.0
        for process in processes:
            info = process.info
            if info["pid"] in ours or info["cpu_times"] is None:
                continue
            used = info["cpu_times"].user + info["cpu_times"].system
            key = (info["pid"], info["create_time"])
            # a process born since sampling began counts from zero; an older one from now
            previous = self._last.get(key, 0.0 if info["create_time"] >= self._started else used)
            added += max(used - previous, 0.0)
            self._last[key] = used
        with self._lock:
            if count:
                self.cpu_seconds += added

    def read(self) -> float:
        with self._lock:
            return self.cpu_seconds


def peak_overlap(spans: list[tuple[int, int]]) -> int:
    """Most intervals open at one instant: did trials really run side by side?"""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:  # at equal times -1 sorts first: touching spans do not overlap
        running += step
        peak = max(peak, running)
    return peak


def run_one(setting: str, overrides: dict[str, Any], sampler: ForeignCpu) -> SearchRun:
    """One search in its own throw-away data directory and MLflow store, then removed."""
    home = tempfile.mkdtemp(prefix="raysplit-speed-")
    os.environ["RAYSPLIT_HOME"] = home
    # connect() exports the previous search's store; each search must resolve its own
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    try:
        spec = load_spec(IRIS_CONFIG, overrides)
        locations = Locations.resolve()
        foreign_before, started = sampler.read(), time.perf_counter()
        outcome = run_search(spec, locations)
        total = time.perf_counter() - started
        foreign = sampler.read() - foreign_before
        client = MlflowClient(locations.mlflow_tracking_uri)
        runs = client.search_runs(
            [outcome.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'",
            max_results=10_000,
        )
        return SearchRun(
            setting=setting,
            tune_seconds=outcome.search_seconds,
            total_seconds=total,
            trials=outcome.trials,
            early_stopped=sum(r.data.tags.get("raysplit.early_stopped") == "true" for r in runs),
            folds_fitted=outcome.folds_fitted,
            trial_seconds=sum((r.info.end_time - r.info.start_time) / 1000 for r in runs),
            fit_seconds=sum(r.data.metrics.get("fit_time_s", 0.0) for r in runs),
            best_cv=outcome.best_cv_score,
            best_family=outcome.best_family,
            peak_running=peak_overlap([(r.info.start_time, r.info.end_time) for r in runs]),
            candidates=frozenset(json.dumps(r.data.params, sort_keys=True) for r in runs),
            foreign_cpu_share=foreign / (total * (os.cpu_count() or 1)),
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)


def progress(run: SearchRun) -> None:
    """One line per search, so a long run shows where it is."""
    print(
        f"{run.setting}: Tune {run.tune_seconds:.1f} s, run_search {run.total_seconds:.1f} s,"
        f" {run.trials} trials, {run.early_stopped} stopped, {run.folds_fitted} folds,"
        f" best {run.best_cv:.4f}, peak {run.peak_running},"
        f" other CPU {100 * run.foreign_cpu_share:.0f} %",
        flush=True,
    )


def spread(values: list[float], fmt: str) -> str:
    """``median (min-max)``: the median resists one disturbed run, the range shows it."""
    return (
        f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
        if len(values) > 1
        else f"{values[0]:{fmt}}"
    )


def median(values: list[float]) -> float:
    """The central figure of repeated runs, robust to one run a neighbour slowed down."""
    return statistics.median(values)


def change(values: list[float], baseline: list[float], fewer: str = "less") -> str:
    """Median against median, as words: ``22% fewer``-style figures without sign slips."""
    ratio = median(values) / median(baseline) - 1
    return f"{abs(ratio):.0%} {fewer if ratio < 0 else 'more'}"


def overlap(first: list[SearchRun], second: list[SearchRun]) -> str:
    """Whether two settings' Tune wall-time ranges overlap, i.e. the noise covers the gap."""
    a = [r.tune_seconds for r in first]
    b = [r.tune_seconds for r in second]
    return "yes" if min(a) <= max(b) and min(b) <= max(a) else "no"


def _of(runs: list[SearchRun], setting: str) -> list[SearchRun]:
    """The runs of one setting; they were interleaved with the others' when measured."""
    return [r for r in runs if r.setting == setting]


def machine_lines(ray_cpus: float) -> list[str]:
    """What the figures depend on: the hardware and the versions that did the work."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        f"- {platform.platform()}, {model}, {os.cpu_count()} CPUs"
        f" (Ray saw {ray_cpus:g}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        f"- Python {platform.python_version()}, Ray {version('ray')},"
        f" scikit-learn {version('scikit-learn')}, MLflow {version('mlflow')},"
        f" Optuna {version('optuna')}",
    ]


def render(
    concurrency: list[SearchRun],
    asha: list[SearchRun],
    args: argparse.Namespace,
    ray_cpus: float,
    elapsed: float,
    command: str,
) -> str:
    """The Markdown page: set-up, tables, and sentences that restate measured figures only."""
    cpus = f"{args.cpus_per_trial:g}"
    lines = [
        "# Training speed: concurrency and ASHA early stopping",
        "",
        f"Written by `make bench`: `{command}`"
        f" ({elapsed / 60:.1f} min in all, {time.strftime('%Y-%m-%d %H:%M %Z')}).",
        "",
        *machine_lines(ray_cpus),
        "",
        'One local Ray instance (`ray.init(address="local")`, no dashboard) is started'
        " before the first search, so Ray's start-up is in no figure. Every search runs"
        " through `tune.search.run_search` (what `raysplit tune` runs) in a throw-away"
        " RAYSPLIT_HOME with its own embedded SQLite MLflow store. **Tune s** is"
        " `Tuner.fit()` alone: trial actors, every fold, the MLflow child runs logged from"
        " the driver. **run_search s** adds validation, the MLflow parent run, refit on the"
        " training split, evaluation, model logging and registration. An untimed iris search"
        " runs first as a warm-up. Settings are interleaved, repeated"
        f" {args.repeats} times (concurrency) and {args.asha_repeats} times (ASHA); cells"
        " are median (min-max). **other CPU** is the CPU time of processes outside this"
        " script's process tree during the search, as a share of all cores.",
        "",
        f"## Trials per minute: iris, 20 trials, ASHA, {cpus} CPU per trial",
        "",
        "`tune/configs/iris.yaml` as shipped except `search.max_concurrent_trials` and"
        f" `search.cpus_per_trial={cpus}`, so with 2 concurrent trials Ray can place both"
        " at once on the 2 cores. **peak running** is the most trials whose MLflow child"
        " runs overlapped in time.",
        "",
        "| max_concurrent_trials | Tune s | trials/min | run_search s | peak running"
        " | stopped by ASHA | trial s (sum) | model fit s (sum) | other CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrent in (1, 2):
        runs = _of(concurrency, f"concurrent={concurrent}")
        lines.append(
            f"| {concurrent} | {spread([r.tune_seconds for r in runs], '.1f')}"
            f" | {spread([r.trials_per_minute for r in runs], '.0f')}"
            f" | {spread([r.total_seconds for r in runs], '.1f')}"
            f" | {spread([r.peak_running for r in runs], 'g')}"
            f" | {spread([r.early_stopped for r in runs], 'g')}"
            f" | {spread([r.trial_seconds for r in runs], '.1f')}"
            f" | {spread([r.fit_seconds for r in runs], '.2f')}"
            f" | {spread([100 * r.foreign_cpu_share for r in runs], '.0f')} % |"
        )
    one = _of(concurrency, "concurrent=1")
    two = _of(concurrency, "concurrent=2")
    speedup = median([r.trials_per_minute for r in two]) / median(
        [r.trials_per_minute for r in one]
    )
    lines += [
        "",
        f"Median trials per minute went from {median([r.trials_per_minute for r in one]):.0f}"
        f" with one trial at a time to {median([r.trials_per_minute for r in two]):.0f} with"
        f" two ({speedup:.2f}x; Tune wall-time ranges overlap: {overlap(one, two)}); the"
        " peak number of trials running at once was"
        f" {max(r.peak_running for r in one)} and {max(r.peak_running for r in two)}."
        f" With one at a time, the trials' own time summed to a median"
        f" {median([r.trial_seconds for r in one]):.1f} s (model fitting"
        f" {median([r.fit_seconds for r in one]):.1f} s) of"
        f" {median([r.tune_seconds for r in one]):.1f} s Tune wall time; the rest of"
        " `Tuner.fit()` lay outside the trials' own reported time. Summed model"
        f" fitting was {median([r.fit_seconds for r in two]):.1f} s for"
        f" {median([r.folds_fitted for r in two]):g} folds with two at a time against"
        f" {median([r.fit_seconds for r in one]):.1f} s for"
        f" {median([r.folds_fitted for r in one]):g} folds with one. ASHA stopped a median"
        f" {median([r.early_stopped for r in one]):g} trials at one and"
        f" {median([r.early_stopped for r in two]):g} at two.",
        "",
        f"## ASHA against no early stopping: {args.asha_dataset},"
        f" {args.asha_samples} trials, 2 concurrent at {cpus} CPU",
        "",
        f"`tune/configs/iris.yaml` with `dataset.name={args.asha_dataset}`, the default"
        f" space of every classification family, `search.num_samples={args.asha_samples}`,"
        f" seed 0, 5-fold CV; only `search.early_stopping` differs. ASHA uses the package's"
        " settings: rungs at 2 and 4 folds, reduction factor 2. **folds fitted** is the sum"
        " over trials of the folds each one completed.",
        "",
        "| early_stopping | Tune s | run_search s | trials stopped | folds fitted"
        " | trial s (sum) | model fit s (sum) | best CV (each run) | best family | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("asha", "none"):
        runs = _of(asha, mode)
        lines.append(
            f"| {mode} | {spread([r.tune_seconds for r in runs], '.1f')}"
            f" | {spread([r.total_seconds for r in runs], '.1f')}"
            f" | {spread([r.early_stopped for r in runs], 'g')}"
            f" | {spread([r.folds_fitted for r in runs], 'g')}"
            f" | {spread([r.trial_seconds for r in runs], '.1f')}"
            f" | {spread([r.fit_seconds for r in runs], '.1f')}"
            f" | {', '.join(f'{r.best_cv:.4f}' for r in runs)}"
            f" | {', '.join(sorted({r.best_family for r in runs}))}"
            f" | {spread([100 * r.foreign_cpu_share for r in runs], '.0f')} % |"
        )
    with_asha, without = _of(asha, "asha"), _of(asha, "none")
    gaps = [abs(a.best_cv - n.best_cv) for a in with_asha for n in without]
    same_candidates = len({r.candidates for r in asha}) == 1
    folds = change([r.folds_fitted for r in with_asha], [r.folds_fitted for r in without], "fewer")
    fits = change([r.fit_seconds for r in with_asha], [r.fit_seconds for r in without])
    wall = change([r.tune_seconds for r in with_asha], [r.tune_seconds for r in without])
    lines += [
        "",
        f"Every run drew the same {args.asha_samples} candidates:"
        f" {'yes' if same_candidates else 'no'}. ASHA stopped a median"
        f" {median([r.early_stopped for r in with_asha]):g} of {args.asha_samples} trials,"
        f" fitted {folds} folds, spent {fits} summed model-fit time and took {wall} Tune"
        f" wall time ({median([r.tune_seconds for r in with_asha]):.1f} s against"
        f" {median([r.tune_seconds for r in without]):.1f} s; ranges overlap:"
        f" {overlap(with_asha, without)}). The largest gap between an"
        f" ASHA run's best CV score and a run without early stopping was {max(gaps):.4f}:"
        f" {'within' if max(gaps) <= SAME_SCORE else 'not within'} {SAME_SCORE}.",
        "",
        "## Every run, in the order run",
        "",
        "| # | search | Tune s | trials/min | run_search s | stopped | folds | best CV"
        " | peak running | other CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, run in enumerate(concurrency + asha, start=1):
        lines.append(
            f"| {number} | {run.setting} | {run.tune_seconds:.1f} | {run.trials_per_minute:.0f}"
            f" | {run.total_seconds:.1f} | {run.early_stopped} | {run.folds_fitted}"
            f" | {run.best_cv:.4f} | {run.peak_running} | {100 * run.foreign_cpu_share:.0f} % |"
        )
    busiest = max(concurrency + asha, key=lambda r: r.foreign_cpu_share)
    lines += [
        "",
        "Other processes used a median"
        f" {100 * median([r.foreign_cpu_share for r in concurrency + asha]):.0f} % of the"
        f" {os.cpu_count()} cores during the searches (at most"
        f" {100 * busiest.foreign_cpu_share:.0f} %, during a {busiest.setting} run). The"
        " machine was shared with other work while this ran: compare a setting's runs with"
        " their **other CPU** before reading much into a small difference.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Start one Ray, run every search interleaved, write the page; stop and clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each concurrency")
    parser.add_argument("--asha-repeats", type=int, default=2, help="runs of asha and none")
    parser.add_argument("--asha-dataset", default="digits")
    parser.add_argument("--asha-samples", type=int, default=20)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    args = parser.parse_args()
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])

    began = time.perf_counter()
    ray_dir = tempfile.mkdtemp(prefix="raysplit-ray-")
    # "local": a new instance of our own, never the cluster `ray start` left on this machine
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _temp_dir=ray_dir,
    )
    ray_cpus = ray.cluster_resources().get("CPU", 0.0)
    cpus = {"search.cpus_per_trial": args.cpus_per_trial}
    concurrency: list[SearchRun] = []
    asha: list[SearchRun] = []
    try:
        with ForeignCpu() as sampler:
            run_one("warm-up", {**cpus}, sampler)
            for _ in range(args.repeats):
                for concurrent in (1, 2):
                    overrides = {**cpus, "search.max_concurrent_trials": concurrent}
                    concurrency.append(run_one(f"concurrent={concurrent}", overrides, sampler))
                    progress(concurrency[-1])
            for _ in range(args.asha_repeats):
                for mode in ("asha", "none"):
                    overrides = {
                        **cpus,
                        "dataset.name": args.asha_dataset,
                        "search.families": None,  # every family of the task, default spaces
                        "search.num_samples": args.asha_samples,
                        "search.max_concurrent_trials": 2,
                        "search.early_stopping": mode,
                        "register.model_name": args.asha_dataset,
                    }
                    asha.append(run_one(mode, overrides, sampler))
                    progress(asha[-1])
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    elapsed = time.perf_counter() - began
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(concurrency, asha, args, ray_cpus, elapsed, command))
    print(f"wrote {args.output} after {elapsed / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
