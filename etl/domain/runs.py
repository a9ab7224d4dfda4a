"""Runs and chunks: their states and the moves allowed between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from etl.domain.chunks import ChunkKey, describe_key_range
from etl.domain.intervals import DataInterval
from etl.domain.windows import RunWindow


class RunState(StrEnum):
    """Where a run is. Terminal states never change again."""

    QUEUED = "queued"
    PLANNING = "planning"
    RUNNING = "running"
    COMMITTING = "committing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
# A run in one of these holds one of its pipeline's max_active_runs places.
ACTIVE_RUN_STATES = frozenset({RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING})
# A chunk starts and records its part only while its run is in one of these: never after
# the run ended, nor once the commit has checked the chunks.
CHUNK_WORK_RUN_STATES = frozenset({RunState.PLANNING, RunState.RUNNING})

# State moves forward only: each state lists the states it may be entered from. A task
# that is delivered twice finds its move already made and does nothing.
RUN_STATE_ENTERED_FROM: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset(),
    RunState.PLANNING: frozenset({RunState.QUEUED}),
    RunState.RUNNING: frozenset({RunState.PLANNING}),
    RunState.COMMITTING: frozenset({RunState.RUNNING}),
    RunState.SUCCEEDED: frozenset({RunState.COMMITTING}),
    RunState.FAILED: frozenset(
        {RunState.QUEUED, RunState.PLANNING, RunState.RUNNING, RunState.COMMITTING}
    ),
    RunState.CANCELLED: frozenset({RunState.QUEUED, RunState.PLANNING, RunState.RUNNING}),
}


class ChunkState(StrEnum):
    """Where a chunk is."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Trigger(StrEnum):
    """Who asked for a run; scheduled runs are unique per pipeline and interval start."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    BACKFILL = "backfill"


@dataclass(frozen=True)
class Run:
    """One run of a pipeline for one data interval, as the ledger has it.

    ``logical_date`` is the interval's start in the pipeline's time zone: what a daily
    run is called, and the day an hourly run belongs to."""

    id: str
    pipeline: str
    logical_date: date
    trigger: Trigger
    state: RunState
    params: dict[str, Any]
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    reason: str | None = None
    chunk_count: int | None = None
    window: RunWindow | None = None
    rows_written: int | None = None
    rows_rejected: int | None = None
    manifest_key: str | None = None
    backfill_id: str | None = None
    interval: DataInterval = field(kw_only=True)

    @property
    def is_terminal(self) -> bool:
        """True once the run can no longer change."""
        return self.state in TERMINAL_RUN_STATES


@dataclass(frozen=True)
class Chunk:
    """One chunk of a run: a fixed key range and, once done, its part."""

    run_id: str
    index: int
    # The keys ``key_lo <= key < key_hi`` (``<= key_hi`` when key_hi_inclusive, below).
    key_lo: ChunkKey
    key_hi: ChunkKey
    state: ChunkState
    attempts: int = 0
    s3_key: str | None = None
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    rows_rejected: int | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The part's ETag as stored, so the commit can check every part with one listing.
    etag: str | None = None
    # The last chunk of a plan reads up to its window's largest key, that key included.
    key_hi_inclusive: bool = False
    # The worker process of its last attempt ("node (pid N)"), when the ledger knows it.
    worker: str | None = None

    @property
    def keys(self) -> str:
        """The chunk's keys for people: ``1..500`` for an integer key, else ``[lo,hi)``."""
        return describe_key_range(self.key_lo, self.key_hi, self.key_hi_inclusive)


@dataclass(frozen=True)
class ChunkStart:
    """What starting a chunk found: its run, read with it (a chunk's work needs the
    pipeline and window), and the chunk as it is now: counting a new attempt, or done
    already (another delivery finished it), or None when the run has ended and the
    chunk is not done."""

    run: Run
    chunk: Chunk | None


@dataclass(frozen=True)
class ChunkFinish:
    """What recording a chunk's part did: whether this call recorded it (the run was
    active and no other delivery had), and whether that made every chunk of the run done,
    so that its commit is this caller's to claim."""

    recorded: bool
    completes_run: bool = False


def chunk_result(chunk: Chunk) -> dict[str, Any]:
    """The small payload a chunk task returns: S3 key, counts and checksum only."""
    return part_result(chunk.s3_key, chunk.rows, chunk.bytes, chunk.sha256)


def part_result(
    key: str | None, rows: int | None, size: int | None, sha256: str | None
) -> dict[str, Any]:
    """chunk_result of a part just written and recorded."""
    return {"key": key, "rows": rows, "bytes": size, "sha256": sha256}


def commit_problems(chunk_count: int | None, chunks: list[Chunk]) -> list[str]:
    """Why a run's chunks cannot be committed; empty when every chunk is done exactly once."""
    problems = []
    if chunk_count is None:
        return ["the run was never planned"]
    indexes = sorted(chunk.index for chunk in chunks)
    if indexes != list(range(chunk_count)):
        missing = sorted(set(range(chunk_count)) - set(indexes))
        problems.append(
            f"expected chunks 0..{chunk_count - 1}, ledger has {len(indexes)}"
            + (f"; missing: {_list_indexes(missing)}" if missing else "")
        )
    not_done = [chunk.index for chunk in chunks if chunk.state is not ChunkState.DONE]
    if not_done:
        problems.append(f"chunks not done: {_list_indexes(not_done)}")
    keys = [chunk.s3_key for chunk in chunks if chunk.state is ChunkState.DONE]
    if len(set(keys)) != len(keys):
        problems.append("two chunks share a part key")
    return problems


def _list_indexes(indexes: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indexes[:limit])
    return shown + (f" and {len(indexes) - limit} more" if len(indexes) > limit else "")
