"""The manifest: the one document consumers trust a run through."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from etl.domain.runs import Chunk, Run

MANIFEST_VERSION = 1


def build_manifest(
    run: Run,
    chunks: list[Chunk],
    *,
    output_format: str,
    schema: list[dict[str, str]],
    created_at: datetime,
    mode: str,
    partition: str,
) -> dict[str, Any]:
    """Describe a committed run: its interval, what it read (``mode``: snapshot,
    partitioned or incremental; its window), schema and every part in chunk order."""
    ordered = sorted(chunks, key=lambda chunk: chunk.index)
    rejected: Counter[str] = Counter()
    for chunk in ordered:
        rejected.update(chunk.rejected_by_reason)
    return {
        "manifest_version": MANIFEST_VERSION,
        "pipeline": run.pipeline,
        "run_id": run.id,
        "logical_date": run.logical_date.isoformat(),
        "interval": run.interval.as_dict(),
        "partition": partition,
        "mode": mode,
        "window": run.window.as_dict() if run.window else {},
        "format": output_format,
        "schema": schema,
        "parts": [
            {"key": c.s3_key, "rows": c.rows, "bytes": c.bytes, "sha256": c.sha256} for c in ordered
        ],
        "total_rows": sum(chunk.rows or 0 for chunk in ordered),
        "rejected_rows": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "params": run.params,
        "created_at": created_at.isoformat(),
    }
