"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etl.domain.backfills import Backfill, BackfillProgress, Reprocess
from etl.domain.dates import parse_logical_date
from etl.domain.dead_letters import DeadLetter
from etl.domain.intervals import DataInterval, parse_date_or_timestamp
from etl.domain.runs import ChunkState, Run, RunState, Trigger


def _date_or_timestamp(value: Any) -> Any:
    # pydantic alone also reads 0 or "1700006400" as Unix times.
    if not isinstance(value, str):
        raise ValueError("must be a string: YYYY-MM-DD, or an ISO 8601 timestamp with offset")
    return parse_date_or_timestamp(value)


class CreateRunRequest(BaseModel):
    """``POST /api/v1/runs``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=63)
    interval: date | datetime | None = Field(
        default=None,
        description="the run's data interval: its date (YYYY-MM-DD) for a daily pipeline, "
        "the ISO 8601 timestamp with offset that starts it for a finer one; default the "
        "last interval that has ended",
    )
    logical_date: date | None = Field(
        default=None, description="YYYY-MM-DD: the same as interval, for a daily pipeline"
    )
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

    @field_validator("interval", mode="before")
    @classmethod
    def _date_or_timestamp(cls, value: Any) -> Any:
        return None if value is None else _date_or_timestamp(value)

    @model_validator(mode="after")
    def _one_name(self) -> CreateRunRequest:
        if self.interval is not None and self.logical_date is not None:
            raise ValueError("give interval or logical_date, not both")
        return self

    @property
    def requested_interval(self) -> date | datetime | None:
        """The interval the request names, if any."""
        return self.interval if self.interval is not None else self.logical_date


class IntervalResponse(BaseModel):
    """A data interval: the rows stamped ``start <= t < end``."""

    start: datetime
    end: datetime

    @classmethod
    def of(cls, interval: DataInterval) -> IntervalResponse:
        """Build from a domain interval."""
        return cls(start=interval.start, end=interval.end)


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
    interval: IntervalResponse
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
            interval=IntervalResponse.of(run.interval),
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


class RunListQuery(BaseModel):
    """The query string of ``GET /api/v1/runs``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | None = Field(default=None, max_length=63)
    state: RunState | None = None
    trigger: Trigger | None = None
    logical_date_from: date | None = Field(default=None, description="YYYY-MM-DD, inclusive")
    logical_date_to: date | None = Field(default=None, description="YYYY-MM-DD, inclusive")
    limit: int = Field(default=50, ge=1, le=500, description="runs per page")
    cursor: str | None = Field(
        default=None, max_length=200, description="next_cursor of the previous page"
    )

    @field_validator("logical_date_from", "logical_date_to", mode="before")
    @classmethod
    def _yyyy_mm_dd_only(cls, value: Any) -> Any:
        return None if value is None else parse_logical_date(str(value))

    @field_validator("limit", mode="before")
    @classmethod
    def _ascii_digits(cls, value: Any) -> Any:
        # A query string carries text; "²" or "1e3" is not a page size.
        if isinstance(value, str) and not (value.isascii() and value.isdigit()):
            raise ValueError("must be a whole number from 1 to 500")
        return value


class RunListResponse(BaseModel):
    """``GET /api/v1/runs``: one page, newest first."""

    runs: list[RunResponse]
    next_cursor: str | None = Field(
        default=None, description="pass as ?cursor= for the next page; null on the last page"
    )


class PipelineResponse(BaseModel):
    """A registered pipeline, its schedule, its last run and when Beat next starts one."""

    name: str
    description: str
    schedule: dict[str, Any] | None
    catch_up: str
    max_active_runs: int | None
    output_format: str
    incremental: bool
    mode: str = Field(description="which rows a run reads: snapshot, partitioned, incremental")
    interval: str = Field(description='what each run covers, e.g. "day (Europe/Berlin)"')
    next_run_at: datetime | None
    next_interval: IntervalResponse | None = Field(
        description="the interval the next scheduled run covers"
    )
    last_run: RunResponse | None
    last_success: RunResponse | None


class PipelineListResponse(BaseModel):
    """``GET /api/v1/pipelines``."""

    pipelines: list[PipelineResponse]


class ReadinessResponse(BaseModel):
    """``GET /readyz``: each dependency by name, "ok" or the kind of problem."""

    status: str = Field(description='"ready" or "not ready"')
    checks: dict[str, str]


class HealthResponse(BaseModel):
    """``GET /healthz``."""

    status: str


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


class DeadLetterQuery(BaseModel):
    """The query string of ``GET /api/v1/dead-letters``."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(default=None, max_length=36)
    all: Literal["true", "false"] = Field(
        default="false", description="true: also the replayed, purged and resolved ones"
    )


class DeadLetterListResponse(BaseModel):
    """``GET /api/v1/dead-letters``."""

    dead_letters: list[DeadLetterResponse]


class ReplayResponse(BaseModel):
    """What a replay did."""

    id: int
    action: str


class CreateBackfillRequest(BaseModel):
    """``POST /api/v1/backfills``: one run per data interval from start to end."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(min_length=1, max_length=63)
    start: date | datetime = Field(
        description="first date (YYYY-MM-DD: every interval of those days), or the ISO 8601 "
        "timestamp with offset that starts the first interval"
    )
    end: date | datetime = Field(
        description="last date, inclusive, or the timestamp that starts the last interval"
    )
    # Strict: a JSON body says 2 and true, and "2", 2.0, "yes" or 1 are mistakes to name.
    max_active: int = Field(default=1, ge=1, le=100, strict=True, description="runs active at once")
    reprocess: Reprocess = Field(
        default=Reprocess.NONE, description="dates that already have a run: none, failed, all"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = Field(default=False, strict=True)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _date_or_timestamp(cls, value: Any) -> Any:
        return _date_or_timestamp(value)

    @field_validator("max_active", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not a boolean")
        return value


class BackfillDate(BaseModel):
    """What a backfill does for one interval."""

    logical_date: date
    interval: IntervalResponse
    run: bool
    reason: str


class BackfillProgressResponse(BaseModel):
    """How far a backfill has got."""

    total: int
    ended: int
    by_state: dict[str, int]
    rows_written: int
    done: bool
    succeeded: bool


class BackfillResponse(BaseModel):
    """A backfill: its request, its progress and its runs."""

    id: str
    pipeline: str
    start: date
    end: date
    max_active: int
    reprocess: str
    created_at: datetime
    progress: BackfillProgressResponse
    runs: list[RunResponse]

    @classmethod
    def from_backfill(cls, backfill: Backfill, runs: list[Run]) -> BackfillResponse:
        """Build from a ledger backfill and its runs."""
        progress = BackfillProgress.of(runs)
        return cls(
            id=backfill.id,
            pipeline=backfill.pipeline,
            start=backfill.start,
            end=backfill.end,
            max_active=backfill.max_active,
            reprocess=backfill.reprocess.value,
            created_at=backfill.created_at,
            progress=BackfillProgressResponse(
                total=progress.total,
                ended=progress.finished,
                by_state={state.value: n for state, n in progress.by_state.items()},
                rows_written=progress.rows_written,
                done=progress.done,
                succeeded=progress.succeeded,
            ),
            runs=[RunResponse.from_run(run) for run in runs],
        )


class CreateBackfillResponse(BaseModel):
    """What ``POST /api/v1/backfills`` decided: the backfill (none for a dry run or when
    every date was skipped) and the plan per date."""

    backfill: BackfillResponse | None
    dates: list[BackfillDate]
