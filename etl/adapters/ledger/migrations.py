"""Creating the ledger's schema, and bringing an older one up to SCHEMA_VERSION."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, Integer, func, inspect, select, text

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
    scheduled_interval_index,
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


def _migrate_to_6(conn: Connection) -> None:
    # Chunks even in rows on any sortable key (#14): a chunk's bounds are JSON scalars in
    # text (an integer key's 5 is "5"), and a plan's last chunk includes its key_hi. A
    # chunk recorded before read key_lo <= key < key_hi (its last key_hi was key_max + 1),
    # which is what key_hi_inclusive false still says: its bounds keep their values.
    columns = {column["name"]: column for column in inspect(conn).get_columns(chunks_table.name)}
    if "key_hi_inclusive" not in columns:
        conn.execute(
            text(
                "ALTER TABLE etl_chunks ADD COLUMN key_hi_inclusive BOOLEAN NOT NULL DEFAULT false"
            )
        )
    if not isinstance(columns["key_lo"]["type"], Integer):
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "ALTER TABLE etl_chunks ALTER COLUMN key_lo TYPE TEXT USING key_lo::text, "
                "ALTER COLUMN key_hi TYPE TEXT USING key_hi::text"
            )
        )
        return
    # SQLite changes a column's type only by replacing the column (DROP COLUMN: 3.35).
    # The new column may hold NULL: SQLite adds a NOT NULL column only with a default.
    for statement in (
        "ALTER TABLE etl_chunks RENAME COLUMN key_lo TO key_lo_v5",
        "ALTER TABLE etl_chunks RENAME COLUMN key_hi TO key_hi_v5",
        "ALTER TABLE etl_chunks ADD COLUMN key_lo TEXT",
        "ALTER TABLE etl_chunks ADD COLUMN key_hi TEXT",
        "UPDATE etl_chunks SET key_lo = CAST(key_lo_v5 AS TEXT), key_hi = CAST(key_hi_v5 AS TEXT)",
        "ALTER TABLE etl_chunks DROP COLUMN key_lo_v5",
        "ALTER TABLE etl_chunks DROP COLUMN key_hi_v5",
    ):
        conn.execute(text(statement))


def _migrate_to_7(conn: Connection) -> None:
    # Every run has a data interval, and a scheduled run is unique per interval start, not
    # per date (#14): an hourly pipeline has 24 a day. A run recorded before covered its
    # logical date; the pipeline's time zone is not known here, so its UTC day. And an
    # incremental pipeline's cursor may be an integer.
    columns = {column["name"] for column in inspect(conn).get_columns(runs_table.name)}
    for name in ("interval_start", "interval_end"):
        if name not in columns:
            kind = "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"
            conn.execute(text(f"ALTER TABLE etl_runs ADD COLUMN {name} {kind}"))
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "UPDATE etl_runs SET interval_start = logical_date::timestamp AT TIME ZONE 'UTC', "
                "interval_end = (logical_date + 1)::timestamp AT TIME ZONE 'UTC' "
                "WHERE interval_start IS NULL"
            )
        )
    else:  # as SQLAlchemy stores a DateTime in SQLite
        conn.execute(
            text(
                "UPDATE etl_runs SET interval_start = logical_date || ' 00:00:00.000000', "
                "interval_end = date(logical_date, '+1 day') || ' 00:00:00.000000' "
                "WHERE interval_start IS NULL"
            )
        )
    conn.execute(text("DROP INDEX IF EXISTS uq_etl_runs_scheduled_date"))
    scheduled_interval_index.create(conn, checkfirst=True)
    # An integer cursor's watermark (a sequence) sits beside a timestamp's.
    columns = {column["name"] for column in inspect(conn).get_columns(watermarks_table.name)}
    if "position" in columns:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "ALTER TABLE etl_watermarks ADD COLUMN position BIGINT, "
                "ALTER COLUMN value DROP NOT NULL"
            )
        )
        return
    # SQLite cannot drop a NOT NULL: the (small) table is copied into the new shape.
    conn.execute(text("ALTER TABLE etl_watermarks RENAME TO etl_watermarks_v6"))
    watermarks_table.create(conn)
    conn.execute(
        text(
            "INSERT INTO etl_watermarks (pipeline, cursor_column, value, run_id, updated_at) "
            "SELECT pipeline, cursor_column, value, run_id, updated_at FROM etl_watermarks_v6"
        )
    )
    conn.execute(text("DROP TABLE etl_watermarks_v6"))


def _migrate_to_8(conn: Connection) -> None:
    # The worker of each chunk's last attempt, for the dashboard's run page (#17).
    columns = {column["name"] for column in inspect(conn).get_columns(chunks_table.name)}
    if "worker" not in columns:
        conn.execute(text("ALTER TABLE etl_chunks ADD COLUMN worker VARCHAR(200)"))


# Later schema changes go here as (version, callable(conn)); a fresh database is created
# from the current metadata and stamped with SCHEMA_VERSION directly.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (2, lambda conn: dead_letters_table.create(conn, checkfirst=True)),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
    (6, _migrate_to_6),
    (7, _migrate_to_7),
    (8, _migrate_to_8),
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
