"""Every PostgreSQL advisory lock id the project takes, in one place.

Any constants work; they only have to be the same in every process, and differ from
each other. (One- and two-key advisory locks live in different spaces, so they would not
collide anyway; distinct values keep that from mattering.) SQLite has one writer at a
time and takes no lock.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# Transaction lock: one process migrates the schema at a time.
MIGRATION_LOCK_ID = 0x6E657463
# Transaction lock per pipeline (two keys: this and the pipeline's name hash): counting
# active runs and admitting one is one step, so two plan tasks cannot take the last place.
ADMISSION_LOCK_ID = 0x6E657464
# Session lock held by the leading Beat for as long as it leads (etl.adapters.ledger.beat).
# Its value is the one Beat always used: a Beat of the previous release and one of this
# release must still exclude each other during a rolling deploy.
BEAT_LEADER_LOCK_ID = 0x6E657465
# Transaction lock per pipeline: two backfills planned at once cannot both start a date.
# (It shared Beat's value until issue 13; it is only held within one transaction.)
BACKFILL_LOCK_ID = 0x6E657466

ALL_LOCK_IDS = (MIGRATION_LOCK_ID, ADMISSION_LOCK_ID, BEAT_LEADER_LOCK_ID, BACKFILL_LOCK_ID)


def lock_for_transaction(conn: Connection, lock_id: int, name: str | None = None) -> None:
    """Take a PostgreSQL advisory lock until the transaction ends; per ``name`` (hashed)
    when given. Does nothing on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    if name is None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})
    else:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:name))"),
            {"space": lock_id, "name": name},
        )
