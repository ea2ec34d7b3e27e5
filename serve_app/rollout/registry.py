"""A finished rollout's outcome, written where the models live: the MLflow Model Registry
and tracking server (issue 16).

Whoever opens a model version in the registry should see what its rollout decided and
why, without the event store: the candidate and control versions are tagged with the
outcome, a promotion moves the control's alias to the candidate's version (through
:func:`raysplit.core.registry.move_alias`, so ``raysplit rollback`` can undo it), and one
MLflow run per rollout holds the decision log, the final report and a plot of the
candidate's share and p-values over time.

The controller calls :func:`record_outcome` once a rollout is terminal and again after a
crash or an MLflow error, so every step is idempotent: the alias move and the tags by
nature, the run by being looked up by the rollout's id before one is created.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import orjson
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from raysplit.core.errors import RaysplitError
from raysplit.core.registry import ROLLED_BACK_TAG, move_alias
from raysplit.core.settings import raysplit_home
from serve_app.config.constants import MAX_REASON
from serve_app.rollout.state import TERMINAL, DecisionEntry, RolloutPhase, RolloutRecord
from serve_app.stats.settings import ALPHA_PROMOTE, ALPHA_WORSE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_EXPERIMENT = "raysplit-rollouts"
ID_TAG = "raysplit.rollout.id"
OUTCOME_TAG = "raysplit.rollout.outcome"
REASON_TAG = "raysplit.rollout.reason"
RUN_TAG = "raysplit.rollout.run"
ALIAS_MOVED_TAG = "raysplit.rollout.alias_moved"
ALIAS_REASON_TAG = "raysplit.rollout.alias_reason"
P_VALUE_FLOOR = 1e-12  # a p-value of 0 has no place on a log axis

_ALIASED = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[A-Za-z0-9_-]+)$")


class ModelRef(BaseModel):
    """A variant's model as the rollout saw it: the URI as configured (an alias or a pin)
    and the registered version it resolved to."""

    model_config = ConfigDict(frozen=True)

    model_uri: str
    name: str
    version: str


class AliasMove(BaseModel):
    """What the outcome does to the control's alias, and why, for the run's tags."""

    model_config = ConfigDict(frozen=True)

    name: str | None = None
    alias: str | None = None
    reason: str

    @property
    def moves(self) -> bool:
        return self.alias is not None


def record_outcome(
    client: MlflowClient,
    record: RolloutRecord,
    decisions: list[DecisionEntry],
    control: ModelRef,
    candidate: ModelRef,
    report: dict | None,
    experiment_name: str | None = None,
) -> str:
    """Write a terminal rollout's outcome to the registry and one tracking run; return the
    run's id.

    ``decisions`` is the rollout's decision log, oldest first; ``report`` the final
    experiment report as JSON. The run goes to ``experiment_name``, by default the
    experiment of the candidate version's source run (beside the search that produced it),
    else ``raysplit-rollouts``. A run of this rollout that already FINISHED means the
    outcome is written: nothing is done again, so a retry cannot, say, undo an operator's
    rollback of the alias. MLflow errors propagate: the caller retries later.
    """
    if record.phase not in TERMINAL:
        raise ValueError(
            f"rollout {record.rollout_id} is {record.phase.value}, not ended: only a promoted,"
            " rolled_back or aborted rollout has an outcome to record"
        )
    experiment_id = _experiment_id(client, candidate, experiment_name)
    existing = _existing_run(client, experiment_id, record.rollout_id)
    if existing is not None and existing.info.status == RunStatus.to_string(RunStatus.FINISHED):
        return existing.info.run_id
    move = _alias_move(record, control, candidate)
    if existing is not None:  # a crash or error part-way: finish the same run
        run_id = existing.info.run_id
    else:
        run_id = client.create_run(
            experiment_id,
            run_name=f"rollout-{record.experiment}-{record.rollout_id}",
            tags={ID_TAG: record.rollout_id},
        ).info.run_id
    if move.moves:
        move_alias(client, move.name, move.alias, candidate.version)
    _tag_versions(client, record, control, candidate, run_id)
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in _params(record, control, candidate).items()],
        metrics=[
            Metric(k, v, int(record.updated_at * 1000), 0)  # fixed: a retry logs no duplicate
            for k, v in _metrics(record, decisions).items()
        ],
        tags=[RunTag(k, v) for k, v in _run_tags(record, move).items()],
    )
    client.log_text(run_id, _json([d.model_dump(mode="json") for d in decisions]), "decisions.json")
    if report is not None:
        client.log_text(run_id, _json(report), "report.json")
    client.log_text(run_id, _json(record.model_dump(mode="json")), "rollout.json")
    client.log_figure(run_id, _plot(record, decisions), "rollout.png")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def _experiment_id(client: MlflowClient, candidate: ModelRef, name: str | None) -> str:
    """The named experiment, else the candidate's source run's (the rollout's evidence
    sits beside the search that produced the model), else the rollouts' own."""
    if name is None:
        source = _source_experiment(client, candidate)
        if source is not None:
            return source
        name = DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=_artifact_location(client, name))
    if experiment.lifecycle_stage == "deleted":
        raise RaysplitError(
            f"MLflow experiment '{name}' is deleted; restore it or name another experiment for"
            " the rollout's run"
        )
    return experiment.experiment_id


def _source_experiment(client: MlflowClient, candidate: ModelRef) -> str | None:
    """The experiment of the run that logged the candidate's version, if it still lives."""
    run_id = client.get_model_version(candidate.name, candidate.version).run_id
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:  # the source run was deleted for good
        return None
    experiment = client.get_experiment(run.info.experiment_id)
    return None if experiment.lifecycle_stage == "deleted" else experiment.experiment_id


def _artifact_location(client: MlflowClient, name: str) -> str | None:
    """An absolute artifact root when the client writes to raysplit's embedded store:
    MLflow's default is ``./mlruns`` of the working directory, which for a Serve replica
    is Ray's, not raysplit's home. Recognised by its URI rather than by
    ``Locations.mlflow_embedded``, which is false in a replica: the cluster exports the
    embedded store's URI as ``MLFLOW_TRACKING_URI`` (see :mod:`raysplit.core.settings`
    for the layout: ``mlflow.db`` and ``mlartifacts/`` in the home)."""
    home = raysplit_home()
    if client.tracking_uri == f"sqlite:///{home / 'mlflow.db'}":
        return f"{(home / 'mlartifacts').as_uri()}/{name}"
    return None


def _existing_run(client: MlflowClient, experiment_id: str, rollout_id: str) -> Run | None:
    """This rollout's run from an earlier call, a finished one first."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{ID_TAG}` = '{rollout_id}'", max_results=10
    )
    finished = RunStatus.to_string(RunStatus.FINISHED)
    return next((r for r in runs if r.info.status == finished), runs[0] if runs else None)


def _alias_move(record: RolloutRecord, control: ModelRef, candidate: ModelRef) -> AliasMove:
    """Which alias a promotion moves: the control's, and only within one registered model
    (an alias names a version of its own model); a pinned control has none to move."""
    if record.phase is not RolloutPhase.PROMOTED:
        return AliasMove(reason=f"the rollout {record.phase.value}: the control keeps its alias")
    if record.config.on_success != "promote":
        return AliasMove(reason="on_success is hold: the last step's split stays, no alias moves")
    match = _ALIASED.match(control.model_uri)
    if match is None:
        return AliasMove(
            reason=f"the control is pinned ({control.model_uri}), it has no alias to move;"
            f" point it at {candidate.name} version {candidate.version} to serve the winner"
        )
    if match["name"] != candidate.name:
        return AliasMove(
            reason=f"the control's alias {match['name']}@{match['alias']} cannot name a version"
            f" of another registered model ({candidate.name} version {candidate.version})"
        )
    return AliasMove(name=match["name"], alias=match["alias"], reason="promoted")


def _tag_versions(
    client: MlflowClient,
    record: RolloutRecord,
    control: ModelRef,
    candidate: ModelRef,
    run_id: str,
) -> None:
    """Each version says what the rollout did to it, so the registry alone tells."""
    reason = record.reason[:MAX_REASON]
    candidate_tags = {
        OUTCOME_TAG: record.phase.value,
        REASON_TAG: reason,
        ID_TAG: record.rollout_id,
        RUN_TAG: run_id,
    }
    if record.phase is RolloutPhase.ROLLED_BACK:
        candidate_tags[ROLLED_BACK_TAG] = reason
    control_outcome = "replaced" if record.phase is RolloutPhase.PROMOTED else "kept"
    control_tags = {OUTCOME_TAG: control_outcome, ID_TAG: record.rollout_id, RUN_TAG: run_id}
    for ref, tags in ((candidate, candidate_tags), (control, control_tags)):
        for key, value in tags.items():
            client.set_model_version_tag(ref.name, ref.version, key, value)


def _params(record: RolloutRecord, control: ModelRef, candidate: ModelRef) -> dict[str, str]:
    config = record.config
    return {
        "candidate": config.candidate,
        "candidate_model": f"{candidate.model_uri} ({candidate.name} version {candidate.version})",
        "control": record.control,
        "control_model": f"{control.model_uri} ({control.name} version {control.version})",
        "steps": ",".join(f"{s:g}" for s in config.steps),
        "min_scored_per_step": str(config.min_scored_per_step),
        "non_inferiority_margin": f"{config.non_inferiority_margin:g}",
        "on_success": config.on_success,
    }


def _metrics(record: RolloutRecord, decisions: list[DecisionEntry]) -> dict[str, float]:
    return {
        "final_share": record.share,
        "steps_reached": float(record.step + 1),
        "decisions": float(len(decisions)),
    }


def _run_tags(record: RolloutRecord, move: AliasMove) -> dict[str, str]:
    tags = {
        OUTCOME_TAG: record.phase.value,
        REASON_TAG: record.reason[:MAX_REASON],
        "raysplit.experiment": record.experiment,
        ALIAS_MOVED_TAG: str(move.moves).lower(),
        ALIAS_REASON_TAG: move.reason,
    }
    if move.moves:
        tags["raysplit.rollout.alias"] = f"{move.name}@{move.alias}"
    return tags


def _json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _plot(record: RolloutRecord, decisions: list[DecisionEntry]) -> Figure:
    """The candidate's share over time and, on a log axis, the always-valid p-values that
    moved it, with the levels they are compared with."""
    from matplotlib.figure import Figure  # lazily: only the controller draws, rarely

    def minutes(at: float) -> float:
        return (at - record.started_at) / 60

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    share_axis = figure.add_subplot()
    times = [0.0] + [minutes(d.at) for d in decisions]
    shares = [record.config.steps[0]] + [d.share_after for d in decisions]
    share_axis.step(times, shares, where="post", color="tab:blue", label="candidate share")
    share_axis.set_xlabel("minutes since the rollout started")
    share_axis.set_ylabel("candidate share of live traffic (%)")
    share_axis.set_ylim(0, 105)
    p_axis = share_axis.twinx()
    for key, label, level, color in (
        (
            "non_inferiority_p_value",
            "non-inferiority p (promotes below",
            ALPHA_PROMOTE,
            "tab:green",
        ),
        ("inferiority_p_value", "inferiority p (rolls back below", ALPHA_WORSE, "tab:red"),
    ):
        points = [
            (minutes(d.at), max(float(d.figures[key]), P_VALUE_FLOOR))
            for d in decisions
            if d.figures and d.figures.get(key) is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            p_axis.plot(xs, ys, marker=".", color=color, label=f"{label} {level:g})")
        p_axis.axhline(level, color=color, linestyle=":", linewidth=1)
    p_axis.set_yscale("log")
    p_axis.set_ylim(top=1.5)
    p_axis.set_ylabel("always-valid p-value")
    handles = share_axis.get_legend_handles_labels()
    more = p_axis.get_legend_handles_labels()
    figure.legend(
        handles[0] + more[0], handles[1] + more[1], loc="outside lower center", ncols=3, fontsize=8
    )
    figure.suptitle(
        f"rollout {record.rollout_id} of {record.experiment}: {record.phase.value}", fontsize=10
    )
    return figure
