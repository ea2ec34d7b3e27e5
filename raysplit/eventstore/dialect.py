"""The two statements SQLite and PostgreSQL spell alike but SQLAlchemy builds per dialect.

Every write of the event store is idempotent or an upsert (events arrive at least once,
from several replicas), so ``INSERT ... ON CONFLICT`` is everywhere; both back ends have
it, through their own SQLAlchemy dialect module.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def insert(dialect: str, table: sa.Table) -> Any:
    """The dialect's ``INSERT`` with ``on_conflict_do_nothing``/``_do_update``."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


@functools.cache  # built once per table: building cost more per write than running
def insert_ignoring(dialect: str, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING``: events are written at least once, stored once."""
    return insert(dialect, table).on_conflict_do_nothing()


def greatest(dialect: str, *values: Any) -> Any:
    """The larger value: SQLite's two-argument ``max`` is PostgreSQL's ``greatest``."""
    return (sa.func.max if dialect == "sqlite" else sa.func.greatest)(*values)
