"""What a replica did with the last ``user_config`` it was given, and the durable record of
the last config any replica of the application accepted.

A refused config must never take traffic down: on the first version, at one replica, a
missing alias made ``reconfigure()`` raise, Serve stopped the only replica and most
requests got 503 until a good config came (docs/refused_deploy.md). So a replica that
refuses keeps what it serves, and a replica that *starts* on a refused config serves the
last accepted one, read from the event store. :class:`DeployStatus` is what
``GET /models``, the gauge and ``raysplit status`` show; the event store keeps the record
(:class:`raysplit.eventstore.accepted_configs.AcceptedConfigs`).
"""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel, Field


class DeployPhase(StrEnum):
    PENDING = "PENDING"  # no config applied yet
    APPLIED = "APPLIED"  # the last config given is the one served
    REFUSED = "REFUSED"  # the last config given was refused; an earlier one is served


class DeployStatus(BaseModel):
    """This replica's view of the last deploy."""

    status: DeployPhase = DeployPhase.PENDING
    reason: str | None = Field(None, description="why the last config was refused")
    refused_config_hash: str | None = None
    serving_config_hash: str | None = Field(None, description="the user_config served now")
    since: float | None = Field(None, description="when this status began (Unix time)")
    from_store: bool = Field(
        False,
        description="this replica started on a refused config and serves the last config"
        " another replica accepted, read from the event store",
    )

    @classmethod
    def applied(cls, config_hash: str) -> DeployStatus:
        return cls(status=DeployPhase.APPLIED, serving_config_hash=config_hash, since=time.time())

    def refused(self, reason: str, refused_hash: str, serving_hash: str) -> DeployStatus:
        """The status after refusing ``refused_hash``; ``since`` stays the first refusal's
        while the same config is refused again (a replica restart, a redeploy of it)."""
        if self.status is DeployPhase.REFUSED and self.refused_config_hash == refused_hash:
            since = self.since
        else:
            since = time.time()
        return DeployStatus(
            status=DeployPhase.REFUSED,
            reason=reason,
            refused_config_hash=refused_hash,
            serving_config_hash=serving_hash,
            since=since,
            from_store=self.from_store,
        )

    def line(self, application: str) -> str:
        """One line for ``raysplit status`` and the replica's log."""
        if self.status is DeployPhase.REFUSED:
            served = "the stored last accepted" if self.from_store else "its previous"
            return (
                f"{application}: REFUSED config {self.refused_config_hash}, serving {served}"
                f" config {self.serving_config_hash} since {_when(self.since)}: {self.reason}"
            )
        if self.status is DeployPhase.APPLIED:
            return f"{application}: APPLIED config {self.serving_config_hash}"
        return f"{application}: PENDING (no config applied yet)"


def _when(at: float | None) -> str:
    return "?" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
