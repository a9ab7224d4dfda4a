"""A database of its own for ``etl demo``, on the configured PostgreSQL server, dropped
when the demo ends: its runs and sample orders never enter the configured ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def scratch_database(
    url: str, prefix: str, ssl_args: dict[str, str] | None = None
) -> Iterator[str]:
    """Create ``<prefix>_<random>`` on the server of ``url`` (a PostgreSQL URL whose user
    may create databases) and yield its URL; drop it on exit, whoever is still connected.
    Raises what the server said if it cannot be created."""
    server = make_url(url)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        server,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 10, **(ssl_args or {})},
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
