"""``raysplit rollout`` output: the rollout's state and decision log as a person reads it,
from the JSON of ``GET /rollout``."""

from __future__ import annotations

import time
from typing import Any


def _weights(weights: dict[str, float]) -> str:
    return " ".join(f"{name}={weight:g}" for name, weight in weights.items())


def _line(entry: dict[str, Any]) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
    shares = f"{entry['share']:g}% -> {entry['share_after']:g}%"
    return f"  {at}  {entry['kind']:<8} step {entry['step'] + 1}  {shares:<12} {entry['reason']}"


def render(view: dict[str, Any]) -> str:
    """Every decision that moved the rollout, and the latest one if it was a hold (the
    controller holds every ``evaluation_interval_s`` until a step's minimum is in)."""
    record = view.get("rollout")
    lines = []
    if view.get("configured") is None:
        lines.append(f"experiment {view['experiment']}: no rollout in the deployed user_config")
    if record is None:
        if view.get("configured") is not None:
            lines.append(f"experiment {view['experiment']}: the rollout has not started yet")
        return "\n".join(lines)
    config = record["config"]
    state = f"{record['phase']}, step {record['step'] + 1} of {len(config['steps'])}"
    lines.append(
        f"rollout {record['rollout_id']} of '{config['candidate']}' against"
        f" '{record['control']}' (experiment {record['experiment']}): {state},"
        f" candidate at {record['share']:g}%"
    )
    lines.append(f"  steps {config['steps']}, {record['reason']}")
    lines.append(
        f"weights: configured {_weights(view['configured_weights'])}"
        f" | effective {_weights(view['effective_weights'])}"
    )
    serving = view.get("serving_seq")
    if serving is not None and serving < record["seq"]:
        # the answering replica's follower has not read the latest change yet (it reads the
        # record every 2 s): its weights and `why` are one decision behind the line above
        lines.append(
            f"  this replica serves change {serving} of the record, not yet the latest"
            f" ({record['seq']}); every replica follows within seconds"
        )
    if view.get("why"):
        lines.append(f"  {view['why']}")
    if record.get("registry_error"):
        lines.append(f"registry not updated yet: {record['registry_error']}")
    decisions = view.get("decisions", [])
    shown = [d for d in decisions if d["kind"] != "hold"]
    if decisions and decisions[-1]["kind"] == "hold":
        shown.append(decisions[-1])
    if shown:
        lines.append("decisions (oldest first; holds but the latest left out):")
        lines.extend(_line(d) for d in shown)
    return "\n".join(lines)
