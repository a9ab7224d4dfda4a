"""A pipeline tried on a few rows of its source: what it would write and reject for an
interval, with nothing recorded, sent or written (``etl preview``)."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from etl.domain.intervals import DataInterval
from etl.domain.schema import as_carried
from etl.domain.transform import BatchResult, Record, Rejection
from etl.domain.windows import CursorValue, ReadScope
from etl.pipelines import Pipeline
from etl.service.execution import cursor_window_now
from etl.service.ports import SourceReader


class TransformRaised(Exception):
    """The pipeline's transform raised on the previewed rows: a bug, shown before any run
    fails a chunk on it."""

    def __init__(self, pipeline: str, error: Exception) -> None:
        super().__init__(f"{pipeline}'s transform raised {type(error).__name__}: {error}")


@dataclass(frozen=True)
class Preview:
    """The first rows of a run's scope, in key order, and what the transform made of them."""

    pipeline: str
    scope: ReadScope
    rows_in_scope: int  # how many rows a run of this interval would read now
    rows_read: int
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def preview(
    pipeline: Pipeline,
    source: SourceReader,
    *,
    interval: DataInterval,
    params: dict[str, Any],
    limit: int,
    watermark: CursorValue | None = None,
) -> Preview:
    """Read at most ``limit`` rows a run of ``interval`` would read (an incremental
    pipeline: its window if planned now, from ``watermark``) and transform them. Raises
    TransformRaised when the transform does: a bug shows here before it fails a chunk."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    scope = cursor_window_now(
        pipeline,
        source,
        ReadScope(
            interval=interval,
            logical_date=pipeline.grain.logical_date(interval),
            params=params,
            time_column=pipeline.source.time_column,
        ),
        watermark,
    )
    span = source.key_span(scope)
    if not span.rows or span.key_min is None or span.key_max is None:
        return Preview(pipeline.name, scope, rows_in_scope=0, rows_read=0)
    batches = source.read_range(span.key_min, span.key_max, limit, scope, key_hi_inclusive=True)
    with closing(batches):  # the first batch only: the cursor is closed after it
        rows = next(batches, [])[:limit]
    try:
        result = pipeline.row_transform(rows)  # a SQL-only pipeline's: its columns as typed
        # Checked against the schema as a run writes them: a mismatch shows here.
        records = [as_carried(record) for record in pipeline.record_schema.conform(result.records)]
    except Exception as exc:
        raise TransformRaised(pipeline.name, exc) from exc
    result = BatchResult(records=records, rejections=result.rejections)
    return Preview(
        pipeline.name,
        scope,
        rows_in_scope=span.rows,
        rows_read=len(rows),
        records=result.records,
        rejections=result.rejections,
    )
