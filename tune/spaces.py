"""Turn a resolved search plan into what Ray Tune's search algorithms take.

Random and TPE search share one conditional, define-by-run space through Ray Tune's
Optuna integration: a trial draws a family, then only that family's parameters. Grid
search enumerates each family's grid itself. Every trial config is ``family`` plus
``"<family>.<param>"`` keys, so the trainable and the MLflow logger read any trial the same
way through :func:`candidate_from_config`.
"""

from __future__ import annotations

import itertools
from typing import Any

import optuna
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.config import Distribution, SearchPlan


def candidate_from_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"family": "svc", "svc.C": 1.0, "knn.n_neighbors": 3}`` -> ``("svc", {"C": 1.0})``."""
    family = config["family"]
    prefix = f"{family}."
    return family, {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}


def grid_candidates(plan: SearchPlan) -> list[dict[str, Any]]:
    """Every combination of every family's finite values, one trial config each."""
    candidates = []
    for family, params in plan.spaces.items():
        names = list(params)
        for combo in itertools.product(*(params[n].examples() for n in names)):
            candidates.append(
                {
                    "family": family,
                    **{f"{family}.{n}": v for n, v in zip(names, combo, strict=True)},
                }
            )
    return candidates


def _suggest(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    match dist.kind:
        case "constant":
            return dist.value
        case "choice":
            return trial.suggest_categorical(name, list(dist.values))
        case "uniform":
            return trial.suggest_float(name, dist.low, dist.high)
        case "loguniform":
            return trial.suggest_float(name, dist.low, dist.high, log=True)
        case "randint":
            return trial.suggest_int(name, int(dist.low), int(dist.high))
    raise AssertionError(dist.kind)


class OptunaSpace:
    """A define-by-run space: TPE sees each family's parameters only when it is drawn.

    A class rather than a closure because Tune pickles its searcher with the experiment.
    """

    def __init__(self, spaces: dict[str, dict[str, Distribution]]):
        self.spaces = spaces

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        family = trial.suggest_categorical("family", list(self.spaces))
        constants = {}
        for param, dist in self.spaces[family].items():
            value = _suggest(trial, f"{family}.{param}", dist)
            if dist.kind == "constant":
                constants[f"{family}.{param}"] = value
        return constants


def search_setup(
    plan: SearchPlan, algorithm: str, num_samples: int, max_concurrent: int, seed: int
) -> tuple[dict[str, Any], Searcher | BasicVariantGenerator, int]:
    """``(param_space, search_alg, num_samples)`` for ``tune.Tuner``.

    Concurrency is capped here, in the search algorithm: Tune ignores
    ``TuneConfig.max_concurrent_trials`` for its basic variant generator.
    """
    if algorithm == "grid":
        return (
            {"candidate": tune.grid_search(grid_candidates(plan))},
            BasicVariantGenerator(max_concurrent=max_concurrent),
            1,  # a grid is run once; num_samples would repeat it
        )
    sampler = (
        optuna.samplers.TPESampler(seed=seed)
        if algorithm == "optuna"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    # a define-by-run space ignores the metric and mode of tune.TuneConfig: set them here
    searcher = OptunaSearch(
        space=OptunaSpace(plan.spaces), metric="cv_mean", mode=plan.metric.mode, sampler=sampler
    )
    return {}, ConcurrencyLimiter(searcher, max_concurrent), num_samples


def trial_name(trial: Trial) -> str:
    """Name trials after their family, so Tune's progress table shows what each one tries."""
    family, _ = candidate_from_config(flatten_trial_config(trial.config))
    return f"{family}_{trial.trial_id}"


def flatten_trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """Grid trials nest their candidate under ``candidate``; the others are already flat."""
    return config.get("candidate", config)
