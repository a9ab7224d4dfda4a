"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from etl.domain.dates import parse_logical_date
from etl.domain.dead_letters import DeadLetter
from etl.domain.runs import ChunkState, Run


class CreateRunRequest(BaseModel):
    """``POST /api/v1/runs``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=63)
    logical_date: date | None = Field(default=None, description="YYYY-MM-DD; default yesterday")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("logical_date", mode="before")
    @classmethod
    def _yyyy_mm_dd_only(cls, value: Any) -> Any:
        # pydantic alone also reads 0 or "1700006400" as Unix times, and datetimes at midnight.
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("must be a string YYYY-MM-DD")
        return parse_logical_date(value)


class ChunkProgress(BaseModel):
    """How many chunks are in each state."""

    total: int | None
    pending: int
    running: int
    done: int
    failed: int


class RunResponse(BaseModel):
    """A run as the API shows it."""

    id: str
    pipeline: str
    logical_date: date
    trigger: str
    state: str
    params: dict[str, Any]
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    chunks: ChunkProgress | None = None
    rows_written: int | None
    rows_rejected: int | None
    manifest_key: str | None

    @classmethod
    def from_run(cls, run: Run, counts: dict[ChunkState, int] | None = None) -> RunResponse:
        """Build from a ledger run and, optionally, its chunk counts."""
        progress = None
        if counts is not None:
            progress = ChunkProgress(
                total=run.chunk_count,
                pending=counts[ChunkState.PENDING],
                running=counts[ChunkState.RUNNING],
                done=counts[ChunkState.DONE],
                failed=counts[ChunkState.FAILED],
            )
        return cls(
            id=run.id,
            pipeline=run.pipeline,
            logical_date=run.logical_date,
            trigger=run.trigger.value,
            state=run.state.value,
            params=run.params,
            reason=run.reason,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            chunks=progress,
            rows_written=run.rows_written,
            rows_rejected=run.rows_rejected,
            manifest_key=run.manifest_key,
        )


class RunListResponse(BaseModel):
    """``GET /api/v1/runs``."""

    runs: list[RunResponse]


class FieldError(BaseModel):
    """One problem with one field of a request."""

    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every error the API returns."""

    error: str
    details: list[FieldError] = Field(default_factory=list)


class DeadLetterResponse(BaseModel):
    """A parked message as the API shows it (without its body)."""

    id: int
    queue: str
    task: str | None
    task_id: str | None
    run_id: str | None
    chunk_index: int | None
    reason: str
    death_reason: str | None
    death_count: int
    state: str
    first_seen_at: datetime
    last_seen_at: datetime
    replay_count: int

    @classmethod
    def from_letter(cls, letter: DeadLetter) -> DeadLetterResponse:
        """Build from a ledger dead letter."""
        return cls(
            id=letter.id,
            queue=letter.queue,
            task=letter.task,
            task_id=letter.task_id,
            run_id=letter.run_id,
            chunk_index=letter.chunk_index,
            reason=letter.reason,
            death_reason=letter.death_reason,
            death_count=letter.death_count,
            state=letter.state.value,
            first_seen_at=letter.first_seen_at,
            last_seen_at=letter.last_seen_at,
            replay_count=letter.replay_count,
        )


class DeadLetterListResponse(BaseModel):
    """``GET /api/v1/dead-letters``."""

    dead_letters: list[DeadLetterResponse]


class ReplayResponse(BaseModel):
    """What a replay did."""

    id: int
    action: str
