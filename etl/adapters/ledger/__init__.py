"""The run ledger: runs and chunks in the database, the source of truth for run state.

Every write is a conditional move (``UPDATE ... WHERE state IN (allowed predecessors)``)
or an insert that ignores conflicts, so a task delivered twice finds its work recorded
and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import RowMapping

from etl.domain.backfills import Backfill, Reprocess
from etl.domain.chunks import ChunkRange
from etl.domain.dead_letters import DeadLetter, DeadLetterState
from etl.domain.runs import (
    ACTIVE_RUN_STATES,
    RUN_STATE_ENTERED_FROM,
    TERMINAL_RUN_STATES,
    Chunk,
    ChunkState,
    Run,
    RunState,
    Trigger,
)
from etl.formats.encoding import PartStats

SCHEMA_VERSION = 5
# Any constants work; they only have to be the same in every process.
_MIGRATION_LOCK_ID = 0x6E657463
_ADMISSION_LOCK_ID = 0x6E657464
_BACKFILL_LOCK_ID = 0x6E657465

_json = JSON().with_variant(JSONB(), "postgresql")
metadata = MetaData()

runs_table = Table(
    "etl_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("pipeline", String(63), nullable=False),
    Column("logical_date", Date, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("params", _json, nullable=False),
    Column("idempotency_key", String(200), nullable=True, unique=True),
    Column("request_fingerprint", String(64), nullable=False),
    Column("reason", Text),
    Column("chunk_count", Integer),
    Column("key_window", _json),
    Column("rows_written", BigInteger),
    Column("rows_rejected", BigInteger),
    Column("manifest_key", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("backfill_id", String(36), nullable=True),
)
# A scheduled run is unique per pipeline and logical date, so a duplicate dispatch (two
# Beats, a redelivered trigger) finds the existing run instead of starting another.
Index(
    "uq_etl_runs_scheduled_date",
    runs_table.c.pipeline,
    runs_table.c.logical_date,
    unique=True,
    postgresql_where=runs_table.c.trigger == Trigger.SCHEDULE.value,
    sqlite_where=runs_table.c.trigger == Trigger.SCHEDULE.value,
)
Index("ix_etl_runs_created_at", runs_table.c.created_at)
Index("ix_etl_runs_pipeline_state", runs_table.c.pipeline, runs_table.c.state)
_backfill_index = Index("ix_etl_runs_backfill", runs_table.c.backfill_id)

chunks_table = Table(
    "etl_chunks",
    metadata,
    Column("run_id", String(36), ForeignKey("etl_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("key_lo", BigInteger, nullable=False),
    Column("key_hi", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("s3_key", Text),
    Column("rows", BigInteger),
    Column("bytes", BigInteger),
    Column("sha256", String(64)),
    Column("rows_rejected", BigInteger),
    Column("rejected_by_reason", _json),
    Column("error", Text),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("etag", String(100)),
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
    Column("headers", _json, nullable=False),
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
watermarks_table = Table(
    "etl_watermarks",
    metadata,
    Column("pipeline", String(63), primary_key=True),
    Column("cursor_column", String(200), nullable=False),
    Column("value", DateTime(timezone=True), nullable=False),
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
    Column("params", _json, nullable=False),
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


def _migrate_to_3(conn: Connection) -> None:
    # Backfills, watermarks and Beat's state in the database (#4).
    columns = {column["name"] for column in inspect(conn).get_columns(runs_table.name)}
    if "backfill_id" not in columns:
        conn.execute(text("ALTER TABLE etl_runs ADD COLUMN backfill_id VARCHAR(36)"))
    _backfill_index.create(conn, checkfirst=True)
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
MIGRATIONS: list[tuple[int, Any]] = [
    (2, lambda conn: dead_letters_table.create(conn, checkfirst=True)),
    (3, _migrate_to_3),
    (4, _migrate_to_4),
    (5, _migrate_to_5),
]


class RunNotFound(LookupError):
    """No run has that id."""

    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r}"


class ChunkNotFound(LookupError):
    """No chunk of that index in that run (a message naming a chunk that was never planned)."""


class BackfillNotFound(LookupError):
    """No backfill has that id."""

    def __str__(self) -> str:
        return f"no backfill with id {self.args[0]!r}"


class WatermarkMoved(RuntimeError):
    """An incremental run's window no longer starts at the pipeline's watermark."""

    def __str__(self) -> str:
        pipeline, low, current = self.args
        return (
            f"the watermark of {pipeline} is {current.isoformat() if current else 'unset'}, "
            f"not this run's window start ({low.isoformat() if low else 'unset'}): "
            "a later run has already committed this window"
        )


class BackfillConflict(RuntimeError):
    """Runs of the backfill's dates appeared after it was planned (another backfill or
    run at the same moment); planning it again decides on what is there now."""


class IdempotencyConflict(Exception):
    """The idempotency key was used before for a different request."""


def now() -> datetime:
    """The current time in UTC (one place, so the ledger's clock is easy to find)."""
    return datetime.now(UTC)


def request_fingerprint(pipeline: str, logical_date: date | None, params: Mapping[str, Any]) -> str:
    """A stable hash of what a run was asked to do, to tell a retried request from a new
    one. ``logical_date`` is None when the request named none (the ledger derived it)."""
    canonical = json.dumps(
        {
            "pipeline": pipeline,
            "logical_date": None if logical_date is None else logical_date.isoformat(),
            "params": params,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def upgrade(engine: Engine) -> int:
    """Create or migrate the ledger's tables; safe to run from many processes at once."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        if not inspect(conn).has_table(schema_version_table.name):
            metadata.create_all(conn)
            conn.execute(
                schema_version_table.insert().values(version=SCHEMA_VERSION, applied_at=now())
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
                    schema_version_table.insert().values(version=version, applied_at=now())
                )
        return SCHEMA_VERSION


class Ledger:
    """Run and chunk bookkeeping on one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- runs ---------------------------------------------------------------------------

    def create_run(
        self,
        *,
        pipeline: str,
        logical_date: date,
        trigger: Trigger,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        logical_date_requested: bool = True,
    ) -> tuple[Run, bool]:
        """Record a new queued run, or find the one this request duplicates.

        Returns the run and whether it was created. A scheduled run is unique per
        pipeline and logical date; a request with an idempotency key already used for a
        different request raises IdempotencyConflict. A request that named no logical
        date (``logical_date_requested`` False: the date was derived from the clock) is
        the same request the next day too, so a client's retry after midnight finds its run.
        """
        fingerprint = request_fingerprint(
            pipeline, logical_date if logical_date_requested else None, params
        )
        moment = now()
        run_id = str(uuid.uuid4())
        values = {
            "id": run_id,
            "pipeline": pipeline,
            "logical_date": logical_date,
            "trigger": trigger.value,
            "state": RunState.QUEUED.value,
            "params": params,
            "idempotency_key": idempotency_key,
            "request_fingerprint": fingerprint,
            "created_at": moment,
            "updated_at": moment,
        }
        with self.engine.begin() as conn:
            inserted = conn.execute(insert_ignoring_conflicts(conn, runs_table, values)).rowcount
            if inserted == 1:
                return self._get_run(conn, run_id), True
            if idempotency_key is not None:
                row = (
                    conn.execute(
                        select(runs_table).where(runs_table.c.idempotency_key == idempotency_key)
                    )
                    .mappings()
                    .one_or_none()
                )
            else:
                row = (
                    conn.execute(
                        select(runs_table).where(
                            runs_table.c.pipeline == pipeline,
                            runs_table.c.logical_date == logical_date,
                            runs_table.c.trigger == Trigger.SCHEDULE.value,
                        )
                    )
                    .mappings()
                    .one_or_none()
                )
        if row is None:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise RuntimeError("run insert conflicted, but no conflicting run was found")
        if idempotency_key is not None and row["request_fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was already used for a different request "
                f"(run {row['id']})"
            )
        return _run_from_row(row), False

    def get_run(self, run_id: str) -> Run:
        """The run with that id; raises RunNotFound."""
        with self.engine.connect() as conn:
            return self._get_run(conn, run_id)

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        state: RunState | None = None,
        trigger: Trigger | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """The most recent runs first, optionally filtered; ``after`` is the (created_at,
        id) of the last run of the previous page (keyset pagination: stable while new
        runs arrive)."""
        query = (
            select(runs_table)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit)
        )
        if pipeline is not None:
            query = query.where(runs_table.c.pipeline == pipeline)
        if state is not None:
            query = query.where(runs_table.c.state == state.value)
        if trigger is not None:
            query = query.where(runs_table.c.trigger == trigger.value)
        if date_from is not None:
            query = query.where(runs_table.c.logical_date >= date_from)
        if date_to is not None:
            query = query.where(runs_table.c.logical_date <= date_to)
        if after is not None:
            created_at, run_id = after
            query = query.where(
                (runs_table.c.created_at < created_at)
                | ((runs_table.c.created_at == created_at) & (runs_table.c.id < run_id))
            )
        with self.engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query).mappings()]

    def latest_run(self, pipeline: str, state: RunState | None = None) -> Run | None:
        """A pipeline's most recently created run (in that state), if any."""
        runs = self.list_runs(pipeline=pipeline, state=state, limit=1)
        return runs[0] if runs else None

    def move_run(self, run_id: str, to: RunState, **fields: Any) -> bool:
        """Move a run to ``to`` if its current state allows it; False if it did not move."""
        moment = now()
        values: dict[str, Any] = {"state": to.value, "updated_at": moment, **fields}
        if to is RunState.PLANNING:
            values["started_at"] = moment
        if to in TERMINAL_RUN_STATES:
            values["finished_at"] = moment
        allowed = [state.value for state in RUN_STATE_ENTERED_FROM[to]]
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state.in_(allowed))
                .values(values)
            ).rowcount
        return moved == 1

    def fail_run(self, run_id: str, reason: str) -> bool:
        """Mark a run failed with a reason, unless it already ended."""
        return self.move_run(run_id, RunState.FAILED, reason=reason[:2000])

    def reopen_run(self, run_id: str) -> Run | None:
        """Take a failed run back for a retry: to queued, with its plan and window (if it
        was planned) kept and its unfinished chunks pending again (attempts start over).
        Queued, it waits for a place like any run, so a retry cannot overlap another run
        of a pipeline with max_active_runs. Returns the reopened run, or None if the run
        is not failed."""
        moment = now()
        with self.engine.begin() as conn:
            run = self._get_run(conn, run_id)
            if run.state is not RunState.FAILED:
                return None
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state == RunState.FAILED.value)
                # Not started until admitted: then it gets a whole deadline of its own.
                .values(
                    state=RunState.QUEUED.value,
                    reason=None,
                    started_at=None,
                    finished_at=None,
                    updated_at=moment,
                )
            ).rowcount
            if moved != 1:
                return None
            conn.execute(
                update(chunks_table)
                .where(
                    chunks_table.c.run_id == run_id,
                    chunks_table.c.state != ChunkState.DONE.value,
                )
                .values(state=ChunkState.PENDING.value, attempts=0, error=None, updated_at=moment)
            )
            return self._get_run(conn, run_id)

    def active_runs(self) -> list[Run]:
        """Every run that has not ended, oldest first."""
        active = [state.value for state in RunState if state not in TERMINAL_RUN_STATES]
        query = (
            select(runs_table)
            .where(runs_table.c.state.in_(active))
            .order_by(runs_table.c.created_at)
        )
        with self.engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query).mappings()]

    def last_activity(self, run_id: str) -> datetime:
        """When the run or any of its chunks last changed."""
        with self.engine.connect() as conn:
            run_updated = conn.execute(
                select(runs_table.c.updated_at).where(runs_table.c.id == run_id)
            ).scalar_one()
            chunk_updated = conn.execute(
                select(func.max(chunks_table.c.updated_at)).where(chunks_table.c.run_id == run_id)
            ).scalar()
        moments = [m for m in (aware_utc(run_updated), aware_utc(chunk_updated)) if m is not None]
        return max(moments)

    # -- chunks -------------------------------------------------------------------------

    def record_plan(
        self, run_id: str, planned: Sequence[ChunkRange], window: dict[str, Any]
    ) -> list[Chunk]:
        """Store a run's chunks and window once; a second call returns the first plan.

        The run row is locked while planning so two deliveries of ``plan_run`` cannot
        record two different plans.
        """
        with self.engine.begin() as conn:
            conn.execute(select(runs_table.c.id).where(runs_table.c.id == run_id).with_for_update())
            existing = self._get_chunks(conn, run_id)
            run = self._get_run(conn, run_id)
            if run.chunk_count is not None:
                return existing
            moment = now()
            if planned:
                conn.execute(
                    chunks_table.insert(),
                    [
                        {
                            "run_id": run_id,
                            "idx": chunk.index,
                            "key_lo": chunk.key_lo,
                            "key_hi": chunk.key_hi,
                            "state": ChunkState.PENDING.value,
                            "attempts": 0,
                            "updated_at": moment,
                        }
                        for chunk in planned
                    ],
                )
            conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id)
                .values(chunk_count=len(planned), key_window=window, updated_at=moment)
            )
            return self._get_chunks(conn, run_id)

    def get_chunks(self, run_id: str) -> list[Chunk]:
        """A run's chunks in index order."""
        with self.engine.connect() as conn:
            return self._get_chunks(conn, run_id)

    def get_chunk(self, run_id: str, index: int) -> Chunk:
        """One chunk; raises ChunkNotFound if the run has no such chunk."""
        with self.engine.connect() as conn:
            return self._get_chunk(conn, run_id, index)

    def start_chunk(self, run_id: str, index: int) -> Chunk:
        """Count an attempt at a chunk that is not done yet; returns the chunk as it is now
        (done, and not counted, if another delivery finished it). One transaction: it is
        on every chunk's path. Raises ChunkNotFound."""
        moment = now()
        with self.engine.begin() as conn:
            conn.execute(
                update(chunks_table)
                .where(
                    chunks_table.c.run_id == run_id,
                    chunks_table.c.idx == index,
                    chunks_table.c.state != ChunkState.DONE.value,
                )
                .values(
                    state=ChunkState.RUNNING.value,
                    attempts=chunks_table.c.attempts + 1,
                    updated_at=moment,
                    started_at=moment,
                    error=None,
                )
            )
            return self._get_chunk(conn, run_id, index)

    def finish_chunk(
        self,
        run_id: str,
        index: int,
        *,
        s3_key: str,
        stats: PartStats,
        rejected_by_reason: dict[str, int],
        etag: str | None = None,
    ) -> bool:
        """Record a chunk's part once; False if another delivery recorded it first."""
        moment = now()
        return self._update_chunk(
            run_id,
            index,
            chunks_table.c.state != ChunkState.DONE.value,
            state=ChunkState.DONE.value,
            s3_key=s3_key,
            etag=etag,
            rows=stats.rows,
            bytes=stats.bytes,
            sha256=stats.sha256,
            rows_rejected=sum(rejected_by_reason.values()),
            rejected_by_reason=rejected_by_reason,
            error=None,
            moment=moment,
            finished_at=moment,
        )

    def fail_chunk(self, run_id: str, index: int, error: str) -> None:
        """Mark a chunk failed with its error, unless it is already done."""
        moment = now()
        self._update_chunk(
            run_id,
            index,
            chunks_table.c.state != ChunkState.DONE.value,
            moment=moment,
            state=ChunkState.FAILED.value,
            error=error[:2000],
            finished_at=moment,
        )

    def invalidate_chunk(self, run_id: str, index: int, error: str) -> bool:
        """Mark a done chunk failed because its part is not as recorded, so a retry of its
        (failed) run transforms it again; False if the chunk was not done."""
        return self._update_chunk(
            run_id,
            index,
            chunks_table.c.state == ChunkState.DONE.value,
            state=ChunkState.FAILED.value,
            error=error[:2000],
        )

    def _update_chunk(
        self, run_id: str, index: int, only_if: Any, moment: datetime | None = None, **values: Any
    ) -> bool:
        """Change one chunk if ``only_if`` holds for it, stamped ``moment``; True if it changed."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(chunks_table)
                .where(chunks_table.c.run_id == run_id, chunks_table.c.idx == index, only_if)
                .values(updated_at=moment or now(), **values)
            ).rowcount
        return changed == 1

    def chunk_counts(self, run_id: str) -> dict[ChunkState, int]:
        """How many of a run's chunks are in each state."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(chunks_table.c.state, func.count())
                .where(chunks_table.c.run_id == run_id)
                .group_by(chunks_table.c.state)
            ).all()
        counts = {state: 0 for state in ChunkState}
        counts.update({ChunkState(state): int(count) for state, count in rows})
        return counts

    # -- dead letters -------------------------------------------------------------------

    def record_dead_letter(self, values: dict[str, Any]) -> tuple[int, bool]:
        """Record a parked message, or update the record of the same message seen before
        (it is dead again, e.g. after a replay). Returns (id, created).

        The values must fit the columns (etl.service.dead_letters bounds and cleans them); the
        body's size defaults to the body's own, as a body given here whole."""
        moment = now()
        values = {"body_size": len(values["body"]), "body_sha256": None, **values}
        with self.engine.begin() as conn:
            existing = conn.execute(
                select(dead_letters_table.c.id, dead_letters_table.c.death_count).where(
                    dead_letters_table.c.fingerprint == values["fingerprint"]
                )
            ).one_or_none()
            if existing is None:
                row = {
                    **values,
                    "state": DeadLetterState.DEAD.value,
                    "first_seen_at": moment,
                    "last_seen_at": moment,
                    "replay_count": 0,
                }
                conn.execute(insert_ignoring_conflicts(conn, dead_letters_table, row))
                new_id = conn.execute(
                    select(dead_letters_table.c.id).where(
                        dead_letters_table.c.fingerprint == values["fingerprint"]
                    )
                ).scalar_one()
                return int(new_id), True
            conn.execute(
                update(dead_letters_table)
                .where(dead_letters_table.c.id == existing.id)
                .values(
                    reason=values["reason"],
                    death_reason=values["death_reason"],
                    death_count=max(int(existing.death_count), int(values["death_count"])),
                    state=DeadLetterState.DEAD.value,
                    last_seen_at=moment,
                    headers=values["headers"],
                    body=values["body"],
                    body_size=values["body_size"],
                    body_sha256=values["body_sha256"],
                )
            )
            return int(existing.id), False

    def list_dead_letters(
        self,
        *,
        state: DeadLetterState | None = DeadLetterState.DEAD,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; by default only those still dead."""
        query = (
            select(dead_letters_table)
            .order_by(dead_letters_table.c.last_seen_at.desc())
            .limit(limit)
        )
        if state is not None:
            query = query.where(dead_letters_table.c.state == state.value)
        if run_id is not None:
            query = query.where(dead_letters_table.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [_dead_letter_from_row(row) for row in conn.execute(query).mappings()]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter; raises LookupError."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(dead_letters_table).where(dead_letters_table.c.id == dead_letter_id)
                )
                .mappings()
                .one_or_none()
            )
        if row is None:
            raise LookupError(f"no dead letter with id {dead_letter_id}")
        return _dead_letter_from_row(row)

    def mark_dead_letter(
        self, dead_letter_id: int, to: DeadLetterState, *, replayed: bool = False
    ) -> bool:
        """Move a dead letter out of ``dead``; False if it was not dead (already handled)."""
        values: dict[str, Any] = {"state": to.value}
        if replayed:
            values["replayed_at"] = now()
            values["replay_count"] = dead_letters_table.c.replay_count + 1
        return self._move_dead_letter(dead_letter_id, DeadLetterState.DEAD, values)

    def reopen_dead_letter(self, dead_letter_id: int) -> bool:
        """Put a dead letter whose replay could not be sent back to ``dead``."""
        return self._move_dead_letter(
            dead_letter_id,
            DeadLetterState.REPLAYED,
            {
                "state": DeadLetterState.DEAD.value,
                "replay_count": dead_letters_table.c.replay_count - 1,
            },
        )

    def _move_dead_letter(
        self, dead_letter_id: int, only_from: DeadLetterState, values: dict[str, Any]
    ) -> bool:
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(dead_letters_table)
                .where(
                    dead_letters_table.c.id == dead_letter_id,
                    dead_letters_table.c.state == only_from.value,
                )
                .values(values)
            ).rowcount
        return moved == 1

    # -- figures for metrics ------------------------------------------------------------

    def run_counts(self) -> dict[tuple[str, RunState], int]:
        """How many runs each pipeline has in each state."""
        query = select(runs_table.c.pipeline, runs_table.c.state, func.count()).group_by(
            runs_table.c.pipeline, runs_table.c.state
        )
        with self.engine.connect() as conn:
            return {(p, RunState(state)): n for p, state, n in conn.execute(query)}

    def last_successes(self) -> dict[str, datetime]:
        """When each pipeline's latest successful run finished."""
        query = (
            select(runs_table.c.pipeline, func.max(runs_table.c.finished_at))
            .where(runs_table.c.state == RunState.SUCCEEDED.value)
            .group_by(runs_table.c.pipeline)
        )
        with self.engine.connect() as conn:
            return {p: aware_utc(moment) for p, moment in conn.execute(query) if moment}  # type: ignore[misc]

    def dead_letter_counts(self) -> dict[str, int]:
        """How many dead letters are in each state."""
        query = select(dead_letters_table.c.state, func.count()).group_by(
            dead_letters_table.c.state
        )
        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(query)}

    # -- admission (max_active_runs, backfills) ----------------------------------------

    def admit_run(self, run_id: str, pipeline_limit: int | None) -> bool:
        """Move a queued run to planning if its pipeline and its backfill have room.

        Active runs are counted under a per-pipeline lock (an advisory transaction lock
        on PostgreSQL), so two plan tasks cannot both take the last place. False: the
        run stays queued (or was not queued).
        """
        moment = now()
        with self.engine.begin() as conn:
            run = self._get_run(conn, run_id)
            if run.state is not RunState.QUEUED:
                return False
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:space, hashtext(:pipeline))"),
                    {"space": _ADMISSION_LOCK_ID, "pipeline": run.pipeline},
                )
            if not self._has_room(conn, run, pipeline_limit):
                return False
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state == RunState.QUEUED.value)
                .values(state=RunState.PLANNING.value, started_at=moment, updated_at=moment)
            ).rowcount
        return moved == 1

    def runs_to_admit(self, pipeline: str, pipeline_limit: int | None) -> list[str]:
        """Queued runs of a pipeline that wait for a place and have one now, oldest
        logical date first: whom to send ``plan_run`` (which decides again, under the
        lock). A run that nothing limits is not waiting, and is left alone."""
        with self.engine.connect() as conn:
            queued = [
                _run_from_row(row)
                for row in conn.execute(
                    select(runs_table)
                    .where(
                        runs_table.c.pipeline == pipeline,
                        runs_table.c.state == RunState.QUEUED.value,
                    )
                    .order_by(runs_table.c.logical_date, runs_table.c.created_at)
                ).mappings()
            ]
            if not queued:
                return []
            active = self._active_counts(conn, pipeline)
            backfill_limits = self._backfill_limits(conn, {r.backfill_id for r in queued})
        chosen = []
        pipeline_room = None if pipeline_limit is None else pipeline_limit - sum(active.values())
        for run in queued:
            if pipeline_room is not None and pipeline_room <= 0:
                break
            if pipeline_limit is None and run.backfill_id is None:
                continue  # nothing holds it back: its plan message is on its way
            if run.backfill_id is not None:
                if active.get(run.backfill_id, 0) >= backfill_limits[run.backfill_id]:
                    continue
                active[run.backfill_id] = active.get(run.backfill_id, 0) + 1
            chosen.append(run.id)
            if pipeline_room is not None:
                pipeline_room -= 1
        return chosen

    def pipelines_with_queued_runs(self) -> list[str]:
        """Pipelines that have at least one queued run."""
        query = (
            select(runs_table.c.pipeline)
            .where(runs_table.c.state == RunState.QUEUED.value)
            .distinct()
            .order_by(runs_table.c.pipeline)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def _has_room(self, conn: Connection, run: Run, pipeline_limit: int | None) -> bool:
        active = self._active_counts(conn, run.pipeline)
        if pipeline_limit is not None and sum(active.values()) >= pipeline_limit:
            return False
        if run.backfill_id is not None:
            limit = self._backfill_limits(conn, {run.backfill_id})[run.backfill_id]
            if active.get(run.backfill_id, 0) >= limit:
                return False
        return True

    @staticmethod
    def _active_counts(conn: Connection, pipeline: str) -> dict[str | None, int]:
        # Active runs of a pipeline by backfill (None: not part of a backfill).
        rows = conn.execute(
            select(runs_table.c.backfill_id, func.count())
            .where(
                runs_table.c.pipeline == pipeline,
                runs_table.c.state.in_([state.value for state in ACTIVE_RUN_STATES]),
            )
            .group_by(runs_table.c.backfill_id)
        )
        return {backfill_id: count for backfill_id, count in rows}

    @staticmethod
    def _backfill_limits(conn: Connection, ids: set[str | None]) -> dict[str, int]:
        wanted = [backfill_id for backfill_id in ids if backfill_id is not None]
        if not wanted:
            return {}
        rows = conn.execute(
            select(backfills_table.c.id, backfills_table.c.max_active).where(
                backfills_table.c.id.in_(wanted)
            )
        )
        return {backfill_id: limit for backfill_id, limit in rows}

    # -- watermarks ---------------------------------------------------------------------

    def watermark(self, pipeline: str) -> datetime | None:
        """The upper bound of the window the pipeline's last committed run read."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(watermarks_table.c.value).where(watermarks_table.c.pipeline == pipeline)
            ).scalar()
        return aware_utc(value)

    def succeed_run(
        self, run: Run, *, watermark: tuple[str, datetime | None, datetime] | None, **fields: Any
    ) -> bool:
        """Mark a committing run succeeded and, for an incremental run, move the
        pipeline's watermark from the window's lower bound to its upper one, in one
        transaction. Raises WatermarkMoved if the watermark is no longer at the lower
        bound (another run committed a window meanwhile); nothing changes then."""
        moment = now()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run.id, runs_table.c.state == RunState.COMMITTING.value)
                .values(
                    state=RunState.SUCCEEDED.value, updated_at=moment, finished_at=moment, **fields
                )
            ).rowcount
            if moved != 1:
                return False
            if watermark is not None:
                column, low, high = watermark
                current = conn.execute(
                    select(watermarks_table.c.value)
                    .where(watermarks_table.c.pipeline == run.pipeline)
                    .with_for_update()
                ).scalar()
                if aware_utc(current) != low:
                    raise WatermarkMoved(run.pipeline, low, aware_utc(current))
                values = {"cursor_column": column, "value": high, "run_id": run.id}
                if current is None:
                    conn.execute(
                        watermarks_table.insert().values(
                            pipeline=run.pipeline, updated_at=moment, **values
                        )
                    )
                else:
                    conn.execute(
                        update(watermarks_table)
                        .where(watermarks_table.c.pipeline == run.pipeline)
                        .values(updated_at=moment, **values)
                    )
        return True

    # -- backfills ----------------------------------------------------------------------

    def create_backfill(
        self,
        *,
        pipeline: str,
        start: date,
        end: date,
        max_active: int,
        reprocess: str,
        params: dict[str, Any],
        dates: Sequence[date],
        planned_on: Mapping[date, str | None] | None = None,
    ) -> tuple[Backfill, list[Run]]:
        """Record a backfill and one queued run per date, in one transaction.

        ``planned_on``: the latest run id of each date in ``[start, end]`` that the plan
        was decided on (None: none). Under a per-pipeline lock, if any date's latest run
        is no longer that one, nothing is recorded and BackfillConflict is raised: two
        backfills planned at once cannot both start the same date.
        """
        moment = now()
        backfill_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            if planned_on is not None:
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        text("SELECT pg_advisory_xact_lock(:space, hashtext(:pipeline))"),
                        {"space": _BACKFILL_LOCK_ID, "pipeline": pipeline},
                    )
                now_latest = {
                    day: run.id
                    for day, run in self._latest_runs_by_date(conn, pipeline, start, end).items()
                }
                changed = sorted(
                    day
                    for day in set(now_latest) | set(planned_on)
                    if now_latest.get(day) != planned_on.get(day)
                )
                if changed:
                    raise BackfillConflict(
                        f"runs of {pipeline} for {', '.join(map(str, changed[:5]))} started "
                        "while this backfill was planned; plan it again"
                    )
            conn.execute(
                backfills_table.insert().values(
                    id=backfill_id,
                    pipeline=pipeline,
                    start_date=start,
                    end_date=end,
                    max_active=max_active,
                    reprocess=reprocess,
                    params=params,
                    created_at=moment,
                )
            )
            run_ids = []
            for logical_date in dates:
                run_id = str(uuid.uuid4())
                conn.execute(
                    runs_table.insert().values(
                        id=run_id,
                        pipeline=pipeline,
                        logical_date=logical_date,
                        trigger=Trigger.BACKFILL.value,
                        state=RunState.QUEUED.value,
                        params=params,
                        request_fingerprint=request_fingerprint(pipeline, logical_date, params),
                        backfill_id=backfill_id,
                        created_at=moment,
                        updated_at=moment,
                    )
                )
                run_ids.append(run_id)
            backfill = self._get_backfill(conn, backfill_id)
            return backfill, [self._get_run(conn, run_id) for run_id in run_ids]

    def get_backfill(self, backfill_id: str) -> Backfill:
        """The backfill with that id; raises BackfillNotFound."""
        with self.engine.connect() as conn:
            return self._get_backfill(conn, backfill_id)

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        """A backfill's runs in logical date order."""
        query = (
            select(runs_table)
            .where(runs_table.c.backfill_id == backfill_id)
            .order_by(runs_table.c.logical_date)
        )
        with self.engine.connect() as conn:
            return [_run_from_row(row) for row in conn.execute(query).mappings()]

    def latest_runs_by_date(self, pipeline: str, start: date, end: date) -> dict[date, Run]:
        """The most recently created run of each logical date in ``[start, end]``."""
        with self.engine.connect() as conn:
            return self._latest_runs_by_date(conn, pipeline, start, end)

    @staticmethod
    def _latest_runs_by_date(
        conn: Connection, pipeline: str, start: date, end: date
    ) -> dict[date, Run]:
        query = (
            select(runs_table)
            .where(
                runs_table.c.pipeline == pipeline,
                runs_table.c.logical_date >= start,
                runs_table.c.logical_date <= end,
            )
            .order_by(runs_table.c.created_at, runs_table.c.id)
        )
        return {
            run.logical_date: run
            for run in (_run_from_row(row) for row in conn.execute(query).mappings())
        }

    @staticmethod
    def _get_backfill(conn: Connection, backfill_id: str) -> Backfill:
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

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _get_run(conn: Connection, run_id: str) -> Run:
        row = (
            conn.execute(select(runs_table).where(runs_table.c.id == run_id))
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise RunNotFound(run_id)
        return _run_from_row(row)

    @staticmethod
    def _get_chunk(conn: Connection, run_id: str, index: int) -> Chunk:
        row = (
            conn.execute(
                select(chunks_table).where(
                    chunks_table.c.run_id == run_id, chunks_table.c.idx == index
                )
            )
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise ChunkNotFound(f"run {run_id} has no chunk {index}")
        return _chunk_from_row(row)

    @staticmethod
    def _get_chunks(conn: Connection, run_id: str) -> list[Chunk]:
        rows = conn.execute(
            select(chunks_table).where(chunks_table.c.run_id == run_id).order_by(chunks_table.c.idx)
        ).mappings()
        return [_chunk_from_row(row) for row in rows]


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
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _run_from_row(row: RowMapping) -> Run:
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
        window=row["key_window"],
        rows_written=row["rows_written"],
        rows_rejected=row["rows_rejected"],
        manifest_key=row["manifest_key"],
        backfill_id=row["backfill_id"],
    )


def _chunk_from_row(row: RowMapping) -> Chunk:
    return Chunk(
        run_id=row["run_id"],
        index=row["idx"],
        key_lo=row["key_lo"],
        key_hi=row["key_hi"],
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
    )


def _dead_letter_from_row(row: RowMapping) -> DeadLetter:
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
