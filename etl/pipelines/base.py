"""What a pipeline is: a source, how to chunk it, a transform, an output and a schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from etl.domain.intervals import DataInterval, Grain
from etl.domain.schedules import MANUAL_GRAIN, CatchUp, Cron, Schedule
from etl.domain.schema import Schema, parse_schema, sql_only_transform
from etl.domain.transform import Transform
from etl.formats.columnar import ColumnarTransform
from etl.formats.encoding import COMPRESSION_RANGE, FORMATS

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")
# A bound parameter in a query source: ``:name``, but not a ``::type`` cast.
_QUERY_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
# What every run binds in a query source, besides its own params.
RUN_BINDINGS = ("interval_start", "interval_end", "logical_date")


class RunParams(BaseModel):
    """Parameters any run accepts; a pipeline may extend this model with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Rows per chunk (at most) for this run only."
    )

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic reads true as 1: one-row chunks, a task per source row.
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not a boolean")
        return value


class SourceMode(StrEnum):
    """Which rows of its source a run reads."""

    SNAPSHOT = "snapshot"  # all of them, every run
    PARTITIONED = "partitioned"  # those whose time_column lies in the run's interval
    INCREMENTAL = "incremental"  # those changed since the last run (cursor_column)


@dataclass(frozen=True)
class Source:
    """A table, or a query used as a subquery, with a key to chunk on (any sortable
    column: integer, text, UUID, timestamp), and which of its rows a run reads (``mode``;
    by default inferred from the columns given):

    - ``snapshot``: every run reads everything.
    - ``partitioned`` by ``time_column`` (a timestamp): a run reads the rows with
      ``interval_start <= time_column < interval_end``, so the runs of a backfill read
      disjoint slices whose union is every row of the range once.
    - ``incremental`` by ``cursor_column``: each run reads only the rows whose cursor is
      after the pipeline's watermark. A timestamp cursor (``updated_at``) reads up to
      ``cursor_lag_s`` seconds before the planning moment, so a row written by a
      transaction that commits late (within the lag) is read by the next run instead of
      being missed; an integer one (``cursor_type="integer"``, a sequence) up to the
      largest value there is when the run is planned.

    A ``query`` may use the bound parameters ``:interval_start``, ``:interval_end``,
    ``:logical_date`` and the run's params by name (``:region``); they are always sent as
    parameters, never formatted into the SQL.
    """

    key_column: str
    columns: tuple[str, ...]
    table: str | None = None
    query: str | None = None
    cursor_column: str | None = None
    cursor_lag_s: int = 0
    cursor_type: str = "timestamp"
    time_column: str | None = None
    mode: SourceMode | None = None

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("a source has exactly one of table and query")
        names = [self.key_column, *self.columns] + ([self.table] if self.table else [])
        names += [column for column in (self.cursor_column, self.time_column) if column]
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"not a plain SQL identifier: {', '.join(bad)}")
        if self.key_column not in self.columns:
            raise ValueError(f"key column {self.key_column!r} must be one of the columns")
        if self.cursor_lag_s < 0:
            raise ValueError("cursor_lag_s must not be negative")
        if self.cursor_lag_s and self.cursor_column is None:
            raise ValueError("cursor_lag_s needs a cursor_column")
        if self.cursor_type not in ("timestamp", "integer"):
            raise ValueError(f'cursor_type is "timestamp" or "integer", not {self.cursor_type!r}')
        if self.cursor_type == "integer" and self.cursor_lag_s:
            raise ValueError(
                "cursor_lag_s counts seconds on a timestamp cursor; an integer cursor is read "
                "up to its largest value when the run is planned"
            )
        if self.cursor_column and self.time_column:
            raise ValueError(
                "a source reads either by interval (time_column) or by watermark "
                "(cursor_column), not both"
            )
        inferred = (
            SourceMode.INCREMENTAL
            if self.cursor_column
            else SourceMode.PARTITIONED
            if self.time_column
            else SourceMode.SNAPSHOT
        )
        mode = inferred if self.mode is None else SourceMode(self.mode)
        if mode is SourceMode.PARTITIONED and self.time_column is None:
            raise ValueError("a partitioned source needs a time_column to read each interval by")
        if mode is SourceMode.INCREMENTAL and self.cursor_column is None:
            raise ValueError("an incremental source needs a cursor_column")
        if mode is not inferred:
            raise ValueError(f"a {mode} source takes no {self.cursor_column or self.time_column}")
        object.__setattr__(self, "mode", mode)

    @property
    def incremental(self) -> bool:
        """Whether runs read a window after the watermark rather than everything."""
        return self.mode is SourceMode.INCREMENTAL

    @property
    def query_parameters(self) -> tuple[str, ...]:
        """The names a query binds (``:name``), in order of first use."""
        if self.query is None:
            return ()
        return tuple(dict.fromkeys(_QUERY_PARAMETER.findall(self.query)))


@dataclass(frozen=True)
class Pipeline:
    """A pipeline definition. Definitions are data: building one opens nothing."""

    name: str
    description: str
    source: Source
    # Source rows -> records and rejections. None: a SQL-only pipeline, whose records are
    # its source's columns named in the schema, cast to their types (the fastest path:
    # COPY to Arrow to the part, no Python object per row; see docs/performance.md).
    transform: Transform | None
    # The records' fields and their logical types (etl.domain.schema): (("id", "integer"),
    # ("at", "timestamp"), ...). Every record is checked against it before it is written.
    schema: tuple[tuple[str, str], ...]
    # The fast path (etl.formats.columnar): the same transform over a batch in Arrow, for
    # the rows it is sure of. Used when the source is PostgreSQL; the other rows reach
    # ``transform`` as COPY's text (numbers and timestamps as strings), so a pipeline
    # that gives one has a ``transform`` that also reads text.
    columnar_transform: ColumnarTransform | None = None
    chunk_size: int = 50_000
    output_format: str = "jsonl.gz"
    # None: the format's default (gzip 5; zstd 3 inside parquet).
    compression_level: int | None = None
    # When Beat starts runs (None: only by hand); see etl.domain.schedules.
    schedule: Schedule | None = field(default_factory=Cron)
    # What Beat does with slots missed while no Beat was running.
    catch_up: CatchUp = CatchUp.LATEST
    catch_up_limit: int = 7
    # At most this many runs of the pipeline plan, transform or commit at once; the
    # others wait queued. None: no limit. An incremental pipeline must say 1.
    max_active_runs: int | None = None
    params_model: type[RunParams] = RunParams
    # Where the pipeline's runs go under ETL_S3_PREFIX; empty means the pipeline's name.
    output_prefix: str = ""
    # The schema parsed (made from ``schema`` when the pipeline is defined).
    record_schema: Schema = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"pipeline name {self.name!r} must match {_NAME.pattern}")
        object.__setattr__(self, "record_schema", parse_schema(self.schema, self.name))
        if self.transform is None:
            if self.columnar_transform is not None:
                raise ValueError(
                    f"pipeline {self.name!r} has a columnar_transform but no transform for "
                    "the rows it leaves; give both, or neither (SQL-only)"
                )
            unread = [n for n in self.record_schema.names if n not in self.source.columns]
            if unread:
                raise ValueError(
                    f"pipeline {self.name!r} has no transform (SQL-only), so its records are "
                    f"source columns; {', '.join(map(repr, unread))} is not among the "
                    f"source's columns ({', '.join(self.source.columns)})"
                )
        if self.output_format not in FORMATS:
            raise ValueError(
                f"unknown output format {self.output_format!r} (one of {', '.join(FORMATS)})"
            )
        if self.compression_level is not None:
            low, high = COMPRESSION_RANGE[self.output_format]
            if not low <= self.compression_level <= high:
                raise ValueError(
                    f"compression_level for {self.output_format} must be {low} to {high}"
                )
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if self.output_prefix and not _PREFIX.match(self.output_prefix):
            raise ValueError(f"output_prefix {self.output_prefix!r} must match {_PREFIX.pattern}")
        if self.catch_up_limit < 1:
            raise ValueError("catch_up_limit must be at least 1")
        if self.max_active_runs is not None and self.max_active_runs < 1:
            raise ValueError("max_active_runs must be at least 1 (or None for no limit)")
        if self.source.incremental and self.max_active_runs != 1:
            # Two overlapping runs would read overlapping windows of the same watermark.
            raise ValueError(
                f"pipeline {self.name!r} reads incrementally, so it needs max_active_runs=1"
            )
        fields = set(self.params_model.model_fields)
        # The planner's own bound parameters are called etl_*.
        reserved = {name for name in fields if name in RUN_BINDINGS or name.startswith("etl_")}
        if reserved:
            raise ValueError(f"run params may not be called {', '.join(sorted(reserved))}")
        unknown = [
            name
            for name in self.source.query_parameters
            if name not in RUN_BINDINGS and name not in fields
        ]
        if unknown:
            raise ValueError(
                f"pipeline {self.name!r}: its query binds :{', :'.join(unknown)}, which is "
                f"neither one of :{', :'.join(RUN_BINDINGS)} nor a field of its params_model"
            )

    @property
    def row_transform(self) -> Transform:
        """What turns a batch of source rows into records: the transform, or for a
        SQL-only pipeline its columns as they are, read as their types."""
        if self.transform is not None:
            return self.transform
        return sql_only_transform(self.record_schema)

    @property
    def sql_only(self) -> bool:
        """Whether the source's SQL is the whole transform (no Python transform)."""
        return self.transform is None

    @property
    def grain(self) -> Grain:
        """The intervals its runs cover (its schedule's; UTC days without one)."""
        return MANUAL_GRAIN if self.schedule is None else self.schedule.grain

    @property
    def output_path(self) -> str:
        """The pipeline's part of every output key, under ETL_S3_PREFIX."""
        return self.output_prefix or self.name

    def next_run_at(self, moment: datetime) -> datetime | None:
        """When Beat next starts a run of this pipeline after ``moment`` (None: never)."""
        return None if self.schedule is None else self.schedule.next_after(moment)

    def next_interval(self, moment: datetime) -> DataInterval | None:
        """The interval Beat's next run of this pipeline after ``moment`` covers."""
        if self.schedule is None:
            return None
        return self.schedule.interval_for(self.schedule.next_after(moment))

    def validate_params(self, raw: dict[str, Any]) -> RunParams:
        """Check run parameters against this pipeline's model (raises pydantic ValidationError)."""
        return self.params_model.model_validate(raw)

    def chunk_size_for(self, params: dict[str, Any]) -> int:
        """The chunk size a run uses: its own parameter, else the pipeline's."""
        size = params.get("chunk_size")
        return int(size) if size else self.chunk_size

    def schema_document(self) -> list[dict[str, str]]:
        """The output schema as it appears in the manifest: each field's logical type."""
        return self.record_schema.document()
