"""What a pipeline is: a source, how to chunk it, a transform, an output and a schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from etl.domain.schedules import CatchUp, Cron, Schedule
from etl.domain.transform import Transform
from etl.formats.columnar import ColumnarTransform
from etl.formats.encoding import COMPRESSION_RANGE, FORMATS

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


class RunParams(BaseModel):
    """Parameters any run accepts; a pipeline may extend this model with its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_size: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Keys per chunk for this run only."
    )

    @field_validator("chunk_size", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic reads true as 1: one-key chunks, a task per source row.
        if isinstance(value, bool):
            raise ValueError("must be a whole number, not a boolean")
        return value


@dataclass(frozen=True)
class Source:
    """A table, or a query used as a subquery, with an integer key to chunk on.

    An incremental source names a ``cursor_column`` (a timestamp such as
    ``updated_at``): each run reads only the rows whose cursor is after the pipeline's
    watermark and at most ``cursor_lag_s`` seconds before the planning moment, so a row
    written by a transaction that commits late (within the lag) is read by the next run
    instead of being missed. Without a cursor column every run reads the whole source.
    """

    key_column: str
    columns: tuple[str, ...]
    table: str | None = None
    query: str | None = None
    cursor_column: str | None = None
    cursor_lag_s: int = 0

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("a source has exactly one of table and query")
        names = [self.key_column, *self.columns] + ([self.table] if self.table else [])
        names += [self.cursor_column] if self.cursor_column else []
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"not a plain SQL identifier: {', '.join(bad)}")
        if self.key_column not in self.columns:
            raise ValueError(f"key column {self.key_column!r} must be one of the columns")
        if self.cursor_lag_s < 0:
            raise ValueError("cursor_lag_s must not be negative")
        if self.cursor_lag_s and self.cursor_column is None:
            raise ValueError("cursor_lag_s needs a cursor_column")

    @property
    def incremental(self) -> bool:
        """Whether runs read a window after the watermark rather than everything."""
        return self.cursor_column is not None


@dataclass(frozen=True)
class Pipeline:
    """A pipeline definition. Definitions are data: building one opens nothing."""

    name: str
    description: str
    source: Source
    transform: Transform
    schema: tuple[tuple[str, str], ...]
    # The fast path (etl.formats.columnar): the same transform over a batch in Arrow, for
    # the rows it is sure of. Used when the source is PostgreSQL; the other rows reach
    # ``transform`` as COPY's text (numbers and timestamps as strings), so a pipeline
    # that gives one has a ``transform`` that also reads text.
    columnar_transform: ColumnarTransform | None = None
    chunk_size: int = 50_000
    output_format: str = "jsonl.gz"
    # None: the format's default (gzip 6; zstd 3 inside parquet).
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

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"pipeline name {self.name!r} must match {_NAME.pattern}")
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

    @property
    def output_path(self) -> str:
        """The pipeline's part of every output key, under ETL_S3_PREFIX."""
        return self.output_prefix or self.name

    def next_run_at(self, moment: datetime) -> datetime | None:
        """When Beat next starts a run of this pipeline after ``moment`` (None: never)."""
        return None if self.schedule is None else self.schedule.next_after(moment)

    def validate_params(self, raw: dict[str, Any]) -> RunParams:
        """Check run parameters against this pipeline's model (raises pydantic ValidationError)."""
        return self.params_model.model_validate(raw)

    def chunk_size_for(self, params: dict[str, Any]) -> int:
        """The chunk size a run uses: its own parameter, else the pipeline's."""
        size = params.get("chunk_size")
        return int(size) if size else self.chunk_size

    def schema_document(self) -> list[dict[str, str]]:
        """The output schema as it appears in the manifest."""
        return [{"name": name, "type": type_} for name, type_ in self.schema]
