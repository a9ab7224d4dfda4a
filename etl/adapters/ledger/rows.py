"""Reading the ledger's rows: one function per table from a row to its domain record,
and the few SQL helpers every aggregate module shares."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from etl.adapters.ledger.schema import backfills_table, chunks_table, runs_table
from etl.domain.backfills import Backfill, Reprocess
from etl.domain.clock import as_utc
from etl.domain.dead_letters import DeadLetter, DeadLetterState
from etl.domain.errors import BackfillNotFound, ChunkNotFound, RunNotFound
from etl.domain.intervals import DataInterval
from etl.domain.runs import Chunk, ChunkState, Run, RunState, Trigger
from etl.domain.windows import RunWindow


def insert_ignoring_conflicts(conn: Connection, table: Table, values: dict[str, Any]) -> Any:
    """An INSERT that does nothing when it would break a unique key."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).values(values).on_conflict_do_nothing()
    raise RuntimeError(f"the ledger supports PostgreSQL and SQLite, not {conn.dialect.name}")


def aware_utc(moment: datetime | None) -> datetime | None:
    """The moment as an aware UTC datetime (None stays None)."""
    # SQLite hands back naive datetimes; everything the ledger writes is UTC.
    return None if moment is None else as_utc(moment)


def run_from_row(row: Mapping[Any, Any]) -> Run:
    return Run(
        id=row["id"],
        pipeline=row["pipeline"],
        logical_date=row["logical_date"],
        trigger=Trigger(row["trigger"]),
        state=RunState(row["state"]),
        params=dict(row["params"] or {}),
        idempotency_key=row["idempotency_key"],
        created_at=aware_utc(row["created_at"]),  # type: ignore[arg-type]
        updated_at=aware_utc(row["updated_at"]),  # type: ignore[arg-type]
        started_at=aware_utc(row["started_at"]),
        finished_at=aware_utc(row["finished_at"]),
        reason=row["reason"],
        chunk_count=row["chunk_count"],
        window=RunWindow.from_dict(row["key_window"]),
        rows_written=row["rows_written"],
        rows_rejected=row["rows_rejected"],
        manifest_key=row["manifest_key"],
        backfill_id=row["backfill_id"],
        interval=DataInterval(
            aware_utc(row["interval_start"]),  # type: ignore[arg-type]
            aware_utc(row["interval_end"]),  # type: ignore[arg-type]
        ),
    )


def chunk_from_row(row: RowMapping) -> Chunk:
    return Chunk(
        run_id=row["run_id"],
        index=row["idx"],
        key_lo=row["key_lo"],
        key_hi=row["key_hi"],
        key_hi_inclusive=bool(row["key_hi_inclusive"]),
        state=ChunkState(row["state"]),
        attempts=row["attempts"],
        s3_key=row["s3_key"],
        rows=row["rows"],
        bytes=row["bytes"],
        sha256=row["sha256"],
        rows_rejected=row["rows_rejected"],
        rejected_by_reason=dict(row["rejected_by_reason"] or {}),
        error=row["error"],
        started_at=aware_utc(row["started_at"]),
        finished_at=aware_utc(row["finished_at"]),
        etag=row["etag"],
        worker=row["worker"],
    )


def dead_letter_from_row(row: RowMapping) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        fingerprint=row["fingerprint"],
        queue=row["queue"],
        task=row["task"],
        task_id=row["task_id"],
        run_id=row["run_id"],
        chunk_index=row["chunk_index"],
        reason=row["reason"],
        death_reason=row["death_reason"],
        death_count=row["death_count"],
        state=DeadLetterState(row["state"]),
        first_seen_at=aware_utc(row["first_seen_at"]),  # type: ignore[arg-type]
        last_seen_at=aware_utc(row["last_seen_at"]),  # type: ignore[arg-type]
        replay_count=row["replay_count"],
        replayed_at=aware_utc(row["replayed_at"]),
        content_type=row["content_type"],
        content_encoding=row["content_encoding"],
        headers=dict(row["headers"] or {}),
        body=bytes(row["body"]),
        body_size=len(row["body"]) if row["body_size"] is None else row["body_size"],
        body_sha256=row["body_sha256"],
    )


def load_run(conn: Connection, run_id: str) -> Run:
    """The run with that id; raises RunNotFound."""
    row = conn.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().one_or_none()
    if row is None:
        raise RunNotFound(run_id)
    return run_from_row(row)


def load_chunk(conn: Connection, run_id: str, index: int) -> Chunk:
    """One chunk of a run; raises ChunkNotFound."""
    row = (
        conn.execute(
            select(chunks_table).where(chunks_table.c.run_id == run_id, chunks_table.c.idx == index)
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise ChunkNotFound(f"run {run_id} has no chunk {index}")
    return chunk_from_row(row)


def undone_chunk(run_id: str) -> Select[tuple[int]]:
    """The index of a chunk of the run that is not done, if any: read from the top, as
    chunks go out and mostly finish in index order, so one is found at once until the
    very end (the claim of a run's commit, and the finish that completes a run)."""
    return (
        select(chunks_table.c.idx)
        .where(chunks_table.c.run_id == run_id, chunks_table.c.state != ChunkState.DONE.value)
        .order_by(chunks_table.c.idx.desc())
        .limit(1)
    )


def load_chunks(conn: Connection, run_id: str) -> list[Chunk]:
    """A run's chunks in index order."""
    rows = conn.execute(
        select(chunks_table).where(chunks_table.c.run_id == run_id).order_by(chunks_table.c.idx)
    ).mappings()
    return [chunk_from_row(row) for row in rows]


def load_backfill(conn: Connection, backfill_id: str) -> Backfill:
    """The backfill with that id; raises BackfillNotFound."""
    row = (
        conn.execute(select(backfills_table).where(backfills_table.c.id == backfill_id))
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise BackfillNotFound(backfill_id)
    return Backfill(
        id=row["id"],
        pipeline=row["pipeline"],
        start=row["start_date"],
        end=row["end_date"],
        max_active=row["max_active"],
        reprocess=Reprocess(row["reprocess"]),
        params=dict(row["params"] or {}),
        created_at=aware_utc(row["created_at"]),  # type: ignore[arg-type]
    )
