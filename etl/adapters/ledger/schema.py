"""The ledger's tables: runs, chunks, backfills, watermarks, dead letters and Beat's
state, all in one schema and migrated together (etl.adapters.ledger.migrations)."""

from __future__ import annotations

import json

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

from etl.domain.chunks import ChunkKey
from etl.domain.runs import Trigger

SCHEMA_VERSION = 8

# JSONB on PostgreSQL, JSON text on SQLite.
JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")
metadata = MetaData()

runs_table = Table(
    "etl_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(63), nullable=False),
    Column("logical_date", Date, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("params", JSON_DOCUMENT, nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("request_fingerprint", String(64), nullable=False),
    Column("reason", Text),
    Column("chunk_count", Integer),
    Column("key_window", JSON_DOCUMENT),
    Column("rows_written", BigInteger),
    Column("rows_rejected", BigInteger),
    Column("manifest_key", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("backfill_id", String(36), nullable=True),
    # The data interval [start, end) the run extracts (UTC); never NULL since version 7.
    Column("interval_start", DateTime(timezone=True)),
    Column("interval_end", DateTime(timezone=True)),
)
# A scheduled run is unique per pipeline and interval, so a duplicate dispatch (two
# Beats, a redelivered trigger) finds the existing run instead of starting another.
scheduled_interval_index = Index(
    "uq_etl_runs_scheduled_interval",
    runs_table.c.pipeline,
    runs_table.c.interval_start,
    unique=True,
    postgresql_where=runs_table.c.trigger == Trigger.SCHEDULE.value,
    sqlite_where=runs_table.c.trigger == Trigger.SCHEDULE.value,
)
Index("ix_etl_runs_created_at", runs_table.c.created_at)
Index("ix_etl_runs_pipeline_state", runs_table.c.pipeline, runs_table.c.state)
backfill_index = Index("ix_etl_runs_backfill", runs_table.c.backfill_id)


class ChunkKeyText(TypeDecorator[ChunkKey]):
    """A chunk's key bound (an int, or text for any other key) as a JSON scalar in a text
    column, the same on PostgreSQL and SQLite: ``5``, ``"2c0e..."``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: ChunkKey | None, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: str | int | None, dialect: Dialect) -> ChunkKey | None:
        if value is None or isinstance(value, int):  # an integer that SQLite kept as one
            return value
        key: ChunkKey = json.loads(value)
        return key


chunks_table = Table(
    "etl_chunks",
    metadata,
    Column("run_id", String(36), ForeignKey("etl_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("key_lo", ChunkKeyText, nullable=False),
    Column("key_hi", ChunkKeyText, nullable=False),
    # A plan's last chunk reads up to key_hi included; rows before version 6 never do.
    Column("key_hi_inclusive", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("s3_key", Text),
    Column("rows", BigInteger),
    Column("bytes", BigInteger),
    Column("sha256", String(64)),
    Column("rows_rejected", BigInteger),
    Column("rejected_by_reason", JSON_DOCUMENT),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("etag", String(100)),
    # Which worker process took the chunk's last attempt ("node (pid N)"), for the run page.
    Column("worker", String(200)),
)

dead_letters_table = Table(
    "etl_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The task id when the message has one: a message dead-lettered again after a
    # replay updates its record instead of adding another.
    Column("fingerprint", String(200), nullable=False, unique=True),
    Column("queue", String(200), nullable=False),
    Column("task", String(200)),
    Column("task_id", String(200)),
    Column("run_id", String(36)),
    Column("chunk_index", Integer),
    Column("reason", Text, nullable=False),
    Column("death_reason", String(64)),
    Column("death_count", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("replay_count", Integer, nullable=False, default=0),
    Column("replayed_at", DateTime(timezone=True)),
    Column("content_type", String(200)),
    Column("content_encoding", String(64)),
    Column("headers", JSON_DOCUMENT, nullable=False),
    # At most the first 64 KiB of the body (etl.domain.dead_letters.BODY_KEPT_BYTES),
    # with the whole body's size and SHA-256.
    Column("body", LargeBinary, nullable=False),
    Column("body_size", BigInteger),
    Column("body_sha256", String(64)),
)
Index("ix_etl_dead_letters_run", dead_letters_table.c.run_id)

schema_version_table = Table(
    "etl_schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# An incremental pipeline's watermark: the upper bound of the window its last committed
# run read. It moves only when a run commits, and only from that run's lower bound.
# A timestamp cursor's is in ``value``, an integer cursor's in ``position`` (version 7).
watermarks_table = Table(
    "etl_watermarks",
    metadata,
    Column("pipeline", String(63), primary_key=True),
    Column("cursor_column", String(200), nullable=False),
    Column("value", DateTime(timezone=True)),
    Column("position", BigInteger),
    Column("run_id", String(36), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

backfills_table = Table(
    "etl_backfills",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(63), nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=False),
    Column("max_active", Integer, nullable=False),
    Column("reprocess", String(16), nullable=False),
    Column("params", JSON_DOCUMENT, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Beat's memory, one row per schedule entry: the last slot it handled (dispatched or
# skipped by the catch-up policy). A restarted or new leader Beat carries on from here.
schedule_state_table = Table(
    "etl_schedule_state",
    metadata,
    Column("entry", String(200), primary_key=True),
    Column("last_slot", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Every slot Beat dispatched, once: the unique key makes a second dispatch impossible.
schedule_ticks_table = Table(
    "etl_schedule_ticks",
    metadata,
    Column("entry", String(200), primary_key=True),
    Column("slot", DateTime(timezone=True), primary_key=True),
    Column("logical_date", Date),
    Column("catch_up", Integer, nullable=False),  # 1 when dispatched late, by catch-up
    Column("dispatched_by", String(200), nullable=False),
    Column("dispatched_at", DateTime(timezone=True), nullable=False),
)
