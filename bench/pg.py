"""A PostgreSQL database of the benchmark's own, made afresh for each measured run."""

from __future__ import annotations

import sqlalchemy as sa

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


def drop_database(name: str) -> None:
    admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fresh_database(name: str) -> str:
    """The URL of an empty database ``name`` (dropped first if it exists)."""
    drop_database(name)
    admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{POSTGRES}/{name}"
