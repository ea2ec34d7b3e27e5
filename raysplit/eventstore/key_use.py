"""How often each API key was used and refused, and where last: ``GET /keys`` reads it.

Replicas add their counts every few seconds (:mod:`serve_app.http.key_use`), one upsert
per batch, so the totals are the cluster's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from raysplit.eventstore import dialect
from raysplit.eventstore.schema import key_use


@dataclass
class Tally:
    uses: int = 0
    refused: int = 0
    last_used_at: float = 0.0
    last_route: str = ""


def add_use(engine: sa.Engine, counts: Mapping[str, Tally]) -> None:
    """Add the counts to the stored ones, one statement for the batch."""
    if not counts:
        return
    name = engine.dialect.name
    insert = dialect.insert(name, key_use)
    upsert = insert.on_conflict_do_update(
        index_elements=[key_use.c.key],
        set_={
            "uses": key_use.c.uses + insert.excluded.uses,
            "refused": key_use.c.refused + insert.excluded.refused,
            "last_used_at": dialect.greatest(
                name, key_use.c.last_used_at, insert.excluded.last_used_at
            ),
            "last_route": insert.excluded.last_route,
        },
    )
    rows = [
        {
            "key": key,
            "uses": t.uses,
            "refused": t.refused,
            "last_used_at": t.last_used_at,
            "last_route": t.last_route,
        }
        for key, t in counts.items()
    ]
    with engine.begin() as conn:
        conn.execute(upsert, rows)


def read_use(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(key_use)).all()
    return {row.key: dict(row._mapping) for row in rows}
