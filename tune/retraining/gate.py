"""Whether a freshly trained version may take the ``challenger`` alias.

A retrain from production feedback runs unattended, so its result must earn the alias: it
has to beat every incumbent (by default the champion and the current challenger) on the
*same* new test slice by a configured margin. Scores from the incumbents' own training
runs are not comparable: they were measured on older data. Pure logic, so the rule is
tested in milliseconds; loading and scoring the incumbents is :mod:`tune.retraining.incumbents`'s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from tune.config import GateConfig


class IncumbentScore(BaseModel):
    """An incumbent version's score on the new test slice, or why it has none."""

    alias: str
    version: str | None = None  # None: nothing holds the alias
    score: float | None = None
    error: str | None = None  # it exists but could not be scored
    skipped: str | None = None  # it exists but is no bar to clear, and why


class GateDecision(BaseModel):
    """The verdict, with every figure it rests on (tagged on the version as evidence)."""

    promote: bool
    reason: str
    metric: str
    score: float
    margin: float
    incumbents: list[IncumbentScore]


def improvement(new: float, old: float, mode: Literal["max", "min"]) -> float:
    """How much better ``new`` is than ``old``: positive when better, whichever the direction."""
    return new - old if mode == "max" else old - new


def decide_gate(
    metric: str,
    mode: Literal["max", "min"],
    score: float,
    incumbents: list[IncumbentScore],
    gate: GateConfig,
) -> GateDecision:
    """Promote only if the new score beats every scored incumbent by ``gate.margin``.

    An incumbent that exists but could not be scored blocks the promotion: a new version
    must not take the alias on a comparison that was never made. Aliases nobody holds, and
    versions skipped with a reason (one a rollout rolled back: it lost to the champion in
    live traffic, whatever it scores on paper), are nothing to beat.
    """
    shortfalls: list[str] = []
    for incumbent in incumbents:
        if incumbent.version is None or incumbent.skipped:
            continue
        if incumbent.score is None:
            shortfalls.append(
                f"@{incumbent.alias} (version {incumbent.version}) could not be scored:"
                f" {incumbent.error}"
            )
            continue
        gain = improvement(score, incumbent.score, mode)
        if gain < gate.margin:
            shortfalls.append(
                f"{metric} {score:.4f} against @{incumbent.alias} (version {incumbent.version})"
                f" {incumbent.score:.4f}: {gain:+.4f}, below the margin {gate.margin:g}"
            )
    held = [i for i in incumbents if i.version is not None and not i.skipped]
    if shortfalls:
        reason = "not promoted: " + "; ".join(shortfalls)
    elif held:
        reason = (
            f"{metric} {score:.4f} beats "
            + ", ".join(f"@{i.alias} (version {i.version}) {i.score:.4f}" for i in held)
            + f" by at least {gate.margin:g} on the new test slice"
        )
    else:
        reason = f"no version holds {', '.join('@' + a for a in gate.against)}: nothing to beat"
    skipped = [i for i in incumbents if i.version is not None and i.skipped]
    if skipped:
        reason += "; " + "; ".join(
            f"@{i.alias} (version {i.version}) not compared: {i.skipped}" for i in skipped
        )
    return GateDecision(
        promote=not shortfalls,
        reason=reason,
        metric=metric,
        score=score,
        margin=gate.margin,
        incumbents=incumbents,
    )
