"""What a pipeline is: a source, how to chunk it, a transform, an output and a schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from etl.domain.encoding import FORMATS
from etl.domain.transform import Transform

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
    """A table, or a query used as a subquery, with an integer key to chunk on."""

    key_column: str
    columns: tuple[str, ...]
    table: str | None = None
    query: str | None = None

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ValueError("a source has exactly one of table and query")
        names = [self.key_column, *self.columns] + ([self.table] if self.table else [])
        bad = [name for name in names if not _IDENTIFIER.match(name)]
        if bad:
            raise ValueError(f"not a plain SQL identifier: {', '.join(bad)}")
        if self.key_column not in self.columns:
            raise ValueError(f"key column {self.key_column!r} must be one of the columns")


@dataclass(frozen=True)
class Schedule:
    """A cron expression read in an IANA timezone."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"


@dataclass(frozen=True)
class Pipeline:
    """A pipeline definition. Definitions are data: building one opens nothing."""

    name: str
    description: str
    source: Source
    transform: Transform
    schema: tuple[tuple[str, str], ...]
    chunk_size: int = 50_000
    output_format: str = "jsonl.gz"
    schedule: Schedule | None = field(default_factory=Schedule)
    params_model: type[RunParams] = RunParams
    # Where the pipeline's runs go under ETL_S3_PREFIX; empty means the pipeline's name.
    output_prefix: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"pipeline name {self.name!r} must match {_NAME.pattern}")
        if self.output_format not in FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}")
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if self.output_prefix and not _PREFIX.match(self.output_prefix):
            raise ValueError(f"output_prefix {self.output_prefix!r} must match {_PREFIX.pattern}")

    @property
    def output_path(self) -> str:
        """The pipeline's part of every output key, under ETL_S3_PREFIX."""
        return self.output_prefix or self.name

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
