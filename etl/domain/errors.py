"""The errors a caller can act on, each with a ``kind`` that says what went wrong.

Entry points map the kind, not the class, to what they answer: api/errors.py to an HTTP
status, etl/cli/common.py to an exit status. A new error picks a kind and needs no new
mapping. Each also keeps the built-in base it had (LookupError, ValueError, ...), so
code that catches those still does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import ClassVar, Literal

ErrorKind = Literal["not_found", "conflict", "invalid", "unavailable"]


class EtlError(Exception):
    """An error the caller can act on; ``kind`` says how."""

    kind: ClassVar[ErrorKind] = "invalid"
    # The request field at fault, when one is (e.g. "pipeline").
    field: ClassVar[str | None] = None


class RunNotFound(EtlError, LookupError):
    """No run has that id."""

    kind = "not_found"

    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r}"


class ChunkNotFound(EtlError, LookupError):
    """No chunk of that index in that run (a message naming a chunk that was never planned)."""

    kind = "not_found"


class BackfillNotFound(EtlError, LookupError):
    """No backfill has that id."""

    kind = "not_found"

    def __str__(self) -> str:
        return f"no backfill with id {self.args[0]!r}"


class DeadLetterNotFound(EtlError, LookupError):
    """No dead letter has that id."""

    kind = "not_found"

    def __str__(self) -> str:
        return f"no dead letter with id {self.args[0]}"


class UnknownPipeline(EtlError, KeyError):
    """No pipeline of that name is registered."""

    kind = "invalid"
    field = "pipeline"

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        super().__init__(name, tuple(known))

    def __str__(self) -> str:
        name, known = self.args
        return f"unknown pipeline {name!r} (known: {', '.join(sorted(known))})"


class IdempotencyConflict(EtlError):
    """The idempotency key was used before for a different request."""

    kind = "conflict"


class WatermarkMoved(EtlError, RuntimeError):
    """An incremental run's window no longer starts at the pipeline's watermark."""

    kind = "conflict"

    def __init__(
        self, pipeline: str, low: datetime | int | None, current: datetime | int | None
    ) -> None:
        super().__init__(pipeline, low, current)

    def __str__(self) -> str:
        pipeline, low, current = self.args
        return (
            f"the watermark of {pipeline} is {_cursor_text(current)}, "
            f"not this run's window start ({_cursor_text(low)}): "
            "a later run has already committed this window"
        )


def _cursor_text(value: datetime | int | None) -> str:
    if value is None:
        return "unset"
    return value.isoformat() if isinstance(value, datetime) else str(value)


class BackfillConflict(EtlError, RuntimeError):
    """Runs of the backfill's dates appeared after it was planned (another backfill or
    run at the same moment); planning it again decides on what is there now."""

    kind = "conflict"


class RunNotRetryable(EtlError, RuntimeError):
    """Only a failed run can be retried."""

    kind = "conflict"


class RunNotCancellable(EtlError, RuntimeError):
    """A run that has ended cannot be cancelled."""

    kind = "conflict"


class EnqueueFailed(EtlError, RuntimeError):
    """The run was recorded but its first task could not be sent; the run is failed."""

    kind = "unavailable"


class PlanTooLarge(EtlError, ValueError):
    """A plan would make more chunks than a run may have."""

    kind = "invalid"

    def __init__(self, pipeline: str, rows: int, chunk_size: int, max_chunks: int) -> None:
        super().__init__(pipeline, rows, chunk_size, max_chunks)
        self.pipeline = pipeline
        self.rows = rows
        self.chunk_size = chunk_size
        self.max_chunks = max_chunks
        self.chunks = -(-rows // chunk_size)

    def __str__(self) -> str:
        smallest_size = -(-self.rows // self.max_chunks)  # the least that fits under the limit
        return (
            f"pipeline {self.pipeline} would plan {self.chunks:,} chunks "
            f"({self.rows:,} rows at chunk_size {self.chunk_size:,}), "
            f"over the limit of {self.max_chunks:,} chunks a run: use a chunk_size of at "
            f"least {smallest_size:,}, or raise ETL_MAX_CHUNKS_PER_RUN"
        )


class SchemaMismatch(EtlError, ValueError):
    """A record that does not match its pipeline's schema: an extra field, a missing one,
    or a value of another type. A bug in the transform (or in a SQL-only pipeline's
    query), so it fails its chunk for good (no retry mends it); a problem with the data
    itself is RowRejected instead. Names the pipeline, the field and an example value."""

    kind = "invalid"

    def __init__(self, pipeline: str | None, field: str, problem: str, example: str) -> None:
        super().__init__(pipeline, field, problem, example)
        self.pipeline = pipeline
        self.field_name = field
        self.problem = problem
        self.example = example

    def in_pipeline(self, pipeline: str) -> SchemaMismatch:
        """The same mismatch, naming ``pipeline`` (a writer knows no pipeline's name)."""
        if self.pipeline is not None:
            return self
        return SchemaMismatch(pipeline, self.field_name, self.problem, self.example)

    def __str__(self) -> str:
        where = f"pipeline {self.pipeline}: " if self.pipeline else ""
        return f"{where}field {self.field_name!r} {self.problem}, e.g. {self.example}"
