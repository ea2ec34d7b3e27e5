"""A rollout's state and how it moves: pure, so the controller, the operator's commands and
every replica agree on it (issue 16).

The state is one row per experiment in the event store (:mod:`serve_app.rollout.store`);
every change bumps ``seq`` and is written only if ``seq`` is still what the writer read
(compare-and-set), so a controller killed between reading and writing, or two writers at
once, can neither skip nor repeat a step. Every replica derives its effective weights
from the row with :func:`effective_config`, so they all serve the same split within one
poll of a decision.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Literal

import orjson
from pydantic import BaseModel, Field

from serve_app.config.errors import ServingError
from serve_app.config.ingress import IngressConfig, VariantConfig
from serve_app.config.rollout import RolloutConfig
from serve_app.rollout.rule import Decision, DecisionKind


class RolloutPhase(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"


TERMINAL = frozenset({RolloutPhase.PROMOTED, RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED})
Action = Literal["pause", "resume", "abort", "promote"]


class RolloutConflict(ServingError):
    """An operator's action that the rollout's current phase does not allow."""

    status = 409


class RolloutRecord(BaseModel):
    """The rollout's persisted state: what every replica serves and where the controller
    resumes."""

    experiment: str
    rollout_id: str = Field(description="names this rollout block and candidate version")
    config: RolloutConfig
    control: str
    candidate_version: str | None = Field(description="registry version of the candidate")
    control_version: str | None = Field(
        None, description="the control's registry version when the rollout started"
    )
    phase: RolloutPhase
    step: int = Field(description="index into config.steps")
    share: float = Field(description="candidate's effective share of live traffic, percent")
    started_at: float
    step_started_at: float
    seq: int = Field(0, description="bumped by every change; writes compare-and-set on it")
    updated_at: float
    reason: str = ""
    registry: Literal["none", "pending", "done"] = Field(
        "none", description="promotion/rollback written to the MLflow registry yet?"
    )
    registry_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def allocation_tag(self) -> str:
        """Part of the allocation key: each (rollout, share) is an epoch of its own, so a
        rollout's epochs never merge with an earlier rollout's at the same share."""
        return f"{self.rollout_id}:{self.started_at:.3f}:{self.share:g}"


def rollout_id(experiment: str, config: RolloutConfig, candidate_version: str | None) -> str:
    """A changed rollout block, or a new version of the candidate, is a new rollout; the
    same block redeployed (or a replica restarted) is the same one."""
    text = orjson.dumps(
        [experiment, config.model_dump(mode="json"), candidate_version], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def start(
    experiment: str,
    config: RolloutConfig,
    control: str,
    candidate_version: str | None,
    now: float,
    control_version: str | None = None,
) -> RolloutRecord:
    """A new rollout at its first step."""
    return RolloutRecord(
        experiment=experiment,
        rollout_id=rollout_id(experiment, config, candidate_version),
        config=config,
        control=control,
        candidate_version=candidate_version,
        control_version=control_version,
        phase=RolloutPhase.RUNNING,
        step=0,
        share=config.steps[0],
        started_at=now,
        step_started_at=now,
        updated_at=now,
        reason=f"started at {config.steps[0]:g}%",
    )


def after_decision(record: RolloutRecord, decision: Decision, now: float) -> RolloutRecord:
    """The state a decision leads to (a hold changes nothing)."""
    kind = decision.kind
    if kind is DecisionKind.HOLD:
        return record
    update: dict = {"seq": record.seq + 1, "updated_at": now, "reason": decision.reason}
    if kind is DecisionKind.ADVANCE:
        step = record.step + 1
        update |= {"step": step, "share": record.config.steps[step], "step_started_at": now}
    elif kind is DecisionKind.ROLLBACK:
        update |= {"phase": RolloutPhase.ROLLED_BACK, "share": 0.0, "registry": "pending"}
    else:  # promote
        update |= _promoted(record)
    return record.model_copy(update=update)


def _promoted(record: RolloutRecord) -> dict:
    """on_success=promote: the control's alias moves to the candidate's version, so the
    control serves the winner and the candidate's own share goes to 0; hold: the last
    step's split stays."""
    share = 0.0 if record.config.on_success == "promote" else record.share
    return {"phase": RolloutPhase.PROMOTED, "share": share, "registry": "pending"}


def after_action(record: RolloutRecord, action: Action, now: float, who: str) -> RolloutRecord:
    """An operator's command; refused (409) when the phase does not allow it."""
    if record.terminal:
        raise RolloutConflict(
            f"rollout {record.rollout_id} already ended ({record.phase.value}); deploy a"
            " changed rollout block to start another"
        )
    update: dict = {"seq": record.seq + 1, "updated_at": now}
    if action == "pause":
        if record.phase is RolloutPhase.PAUSED:
            raise RolloutConflict("the rollout is already paused")
        update |= {"phase": RolloutPhase.PAUSED, "reason": f"paused by {who}"}
    elif action == "resume":
        if record.phase is not RolloutPhase.PAUSED:
            raise RolloutConflict("the rollout is not paused")
        # step_started_at stays: it dates the step's epochs, whose labels still count
        update |= {"phase": RolloutPhase.RUNNING, "reason": f"resumed by {who}"}
    elif action == "abort":
        update |= {"phase": RolloutPhase.ABORTED, "share": 0.0, "reason": f"aborted by {who}"}
    elif action == "promote":
        update |= _promoted(record) | {"reason": f"promoted by {who}"}
    else:
        raise ValueError(f"unknown rollout action '{action}'")
    return record.model_copy(update=update)


def effective_weights(config: IngressConfig, record: RolloutRecord) -> dict[str, float]:
    """Live variants' weights while ``record`` holds: the candidate gets its share, the
    other live variants split the rest in proportion to their configured weights (all to
    the control if none of them has a configured weight)."""
    candidate = record.config.candidate
    others = [v for v in config.live if v.name != candidate]
    total = sum(v.weight for v in others)
    rest = 100.0 - record.share
    weights = {
        v.name: rest * v.weight / total if total > 0 else (rest if v.name == record.control else 0)
        for v in others
    }
    return weights | {candidate: record.share}


def effective_config(config: IngressConfig, record: RolloutRecord | None) -> IngressConfig:
    """The config a replica serves: the deployed one, with the rollout's weights while a
    rollout of this config's block holds the traffic."""
    if record is None or not applies(config, record):
        return config
    weights = effective_weights(config, record)
    variants: list[VariantConfig] = [
        v.model_copy(update={"weight": weights[v.name]}) if v.name in weights else v
        for v in config.variants
    ]
    return config.model_copy(update={"variants": variants})


def applies(config: IngressConfig, record: RolloutRecord) -> bool:
    """Whether ``record`` is the rollout of this config (a row left from a removed or
    changed block does not steer traffic)."""
    return (
        config.rollout is not None
        and record.experiment == config.experiment
        and record.config == config.rollout
        and record.control == config.control_variant
    )


def weights_differ(config: IngressConfig, record: RolloutRecord | None) -> str | None:
    """Why the effective weights are not the configured ones, or None."""
    if record is None or not applies(config, record):
        return None
    return (
        f"rollout {record.rollout_id} ({record.phase.value}, step {record.step + 1} of"
        f" {len(record.config.steps)}): the controller owns the weights; {record.reason}"
    )


class DecisionEntry(BaseModel):
    """One line of the rollout's decision log: the controller's evaluations (hold included)
    and the operators' commands, with the figures behind each."""

    experiment: str
    rollout_id: str
    at: float
    seq: int = Field(description="the record's seq after this entry")
    step: int
    kind: str = Field(description="hold, advance, rollback, promote; or an operator's action")
    share: float = Field(description="candidate's share when it was taken, percent")
    share_after: float
    reason: str
    actor: str = Field(description="the replica that decided, or the operator's command")
    figures: dict | None = Field(None, description="RolloutFigures of a controller decision")


def log_entry_for(
    before: RolloutRecord | None,
    after: RolloutRecord,
    kind: str,
    actor: str,
    at: float,
    reason: str | None = None,
    figures: dict | None = None,
) -> DecisionEntry:
    """The decision-log line of the move from ``before`` (None: the rollout's start) to
    ``after`` (a hold: ``after is before``, with its own ``reason``)."""
    return DecisionEntry(
        experiment=after.experiment,
        rollout_id=after.rollout_id,
        at=at,
        seq=after.seq,
        step=before.step if before else 0,
        kind=kind,
        share=before.share if before else 0.0,
        share_after=after.share,
        reason=reason if reason is not None else after.reason,
        actor=actor,
        figures=figures,
    )
