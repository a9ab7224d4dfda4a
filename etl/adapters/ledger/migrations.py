"""Creating the ledger's schema, and bringing an older one up to SCHEMA_VERSION."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, func, inspect, select, text

from etl.adapters.ledger.locks import MIGRATION_LOCK_ID, lock_for_transaction
from etl.adapters.ledger.schema import (
    SCHEMA_VERSION,
    backfill_index,
    backfills_table,
    chunks_table,
    dead_letters_table,
    metadata,
    runs_table,
    schedule_state_table,
    schedule_ticks_table,
    schema_version_table,
    watermarks_table,
)
from etl.domain.clock import utc_now


def _migrate_to_3(conn: Connection) -> None:
    # Backfills, watermarks and Beat's state in the database (#4).
    columns = {column["name"] for column in inspect(conn).get_columns(runs_table.name)}
    if "backfill_id" not in columns:
        conn.execute(text("ALTER TABLE etl_runs ADD COLUMN backfill_id VARCHAR(36)"))
    backfill_index.create(conn, checkfirst=True)
    for table in (watermarks_table, backfills_table, schedule_state_table, schedule_ticks_table):
        table.create(conn, checkfirst=True)


def _migrate_to_4(conn: Connection) -> None:
    # Each part's ETag, so the commit checks all parts with one listing (#7).
    columns = {column["name"] for column in inspect(conn).get_columns(chunks_table.name)}
    if "etag" not in columns:
        conn.execute(text("ALTER TABLE etl_chunks ADD COLUMN etag VARCHAR(100)"))


def _migrate_to_5(conn: Connection) -> None:
    # A dead letter keeps a bounded excerpt of its body, with the whole body's size and
    # SHA-256 (#12); a body recorded before was kept whole.
    columns = {column["name"] for column in inspect(conn).get_columns(dead_letters_table.name)}
    if "body_size" not in columns:
        conn.execute(text("ALTER TABLE etl_dead_letters ADD COLUMN body_size BIGINT"))
        conn.execute(text("UPDATE etl_dead_letters SET body_size = length(body)"))
    if "body_sha256" not in columns:
        conn.execute(text("ALTER TABLE etl_dead_letters ADD COLUMN body_sha256 VARCHAR(64)"))


# Later schema changes go here as (version, callable(conn)); a fresh database is created
# from the current metadata and stamped with SCHEMA_VERSION directly.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (2, lambda conn: dead_letters_table.create(conn, checkfirst=True)),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
]


def upgrade(engine: Engine) -> int:
    """Create or migrate the ledger's tables; safe to run from many processes at once."""
    with engine.begin() as conn:
        lock_for_transaction(conn, MIGRATION_LOCK_ID)
        if not inspect(conn).has_table(schema_version_table.name):
            metadata.create_all(conn)
            conn.execute(
                schema_version_table.insert().values(version=SCHEMA_VERSION, applied_at=utc_now())
            )
            return SCHEMA_VERSION
        current = conn.execute(select(func.max(schema_version_table.c.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the ledger is at schema version {current}, "
                f"newer than this code ({SCHEMA_VERSION})"
            )
        for version, migrate in MIGRATIONS:
            if version > current:
                migrate(conn)
                conn.execute(
                    schema_version_table.insert().values(version=version, applied_at=utc_now())
                )
        return SCHEMA_VERSION
