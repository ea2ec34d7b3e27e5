"""The last ``user_config`` any replica of each Serve application accepted, one row each.

A replica that starts on a config it must refuse serves this one instead of failing
(:mod:`serve_app.predict.deploy_status` says why).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from raysplit.eventstore import dialect
from raysplit.eventstore.schema import accepted_configs


class AcceptedConfig(BaseModel):
    application: str
    config_hash: str
    user_config: dict[str, Any]
    accepted_at: float
    replica: str


class AcceptedConfigs:
    """The last accepted ``user_config`` per Serve application, one row each."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def save(self, record: AcceptedConfig) -> None:
        """Upsert: the newest accepted config of the application wins. Replicas of one
        deploy write the same row; a slower replica of an older deploy does not overwrite
        a newer one (``accepted_at`` only moves forward)."""
        insert = dialect.insert(self.engine.dialect.name, accepted_configs).values(
            **record.model_dump()
        )
        upsert = insert.on_conflict_do_update(
            index_elements=[accepted_configs.c.application],
            set_={
                c: insert.excluded[c]
                for c in ("config_hash", "user_config", "accepted_at", "replica")
            },
            where=accepted_configs.c.accepted_at <= insert.excluded.accepted_at,
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)

    def read(self, application: str) -> AcceptedConfig | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(accepted_configs).where(accepted_configs.c.application == application)
            ).first()
        return None if row is None else AcceptedConfig.model_validate(row._asdict())
