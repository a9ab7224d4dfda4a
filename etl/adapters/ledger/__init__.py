"""The run ledger: runs, chunks, backfills, watermarks and dead letters in the database,
the source of truth for run state.

Every write is a conditional move (``UPDATE ... WHERE state IN (allowed predecessors)``)
or an insert that ignores conflicts, so a task delivered twice finds its work recorded
and changes nothing.

One module per concern: schema (the tables), migrations (upgrade), locks (every advisory
lock id), rows (row -> record), and one per aggregate: runs, admission, chunks,
watermarks, backfills, dead_letters. ``Ledger`` is all of them on one engine.
"""

from __future__ import annotations

from sqlalchemy import Engine

from etl.adapters.ledger.admission import AdmissionLedger
from etl.adapters.ledger.backfills import BackfillsLedger
from etl.adapters.ledger.chunks import ChunksLedger
from etl.adapters.ledger.dead_letters import DeadLettersLedger
from etl.adapters.ledger.migrations import MIGRATIONS, upgrade
from etl.adapters.ledger.rows import aware_utc, insert_ignoring_conflicts
from etl.adapters.ledger.runs import RunsLedger, request_fingerprint
from etl.adapters.ledger.schema import (
    SCHEMA_VERSION,
    backfills_table,
    chunks_table,
    dead_letters_table,
    metadata,
    runs_table,
    schedule_state_table,
    schedule_ticks_table,
    schema_version_table,
    watermarks_table,
)
from etl.adapters.ledger.watermarks import WatermarksLedger

# The errors live in the domain; these names keep the ledger's old imports working.
from etl.domain.errors import (
    BackfillConflict,
    BackfillNotFound,
    ChunkNotFound,
    DeadLetterNotFound,
    IdempotencyConflict,
    RunNotFound,
    WatermarkMoved,
)


class Ledger(
    RunsLedger,
    AdmissionLedger,
    ChunksLedger,
    WatermarksLedger,
    BackfillsLedger,
    DeadLettersLedger,
):
    """Run, chunk, backfill, watermark and dead-letter bookkeeping on one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "BackfillConflict",
    "BackfillNotFound",
    "ChunkNotFound",
    "DeadLetterNotFound",
    "IdempotencyConflict",
    "Ledger",
    "RunNotFound",
    "WatermarkMoved",
    "aware_utc",
    "backfills_table",
    "chunks_table",
    "dead_letters_table",
    "insert_ignoring_conflicts",
    "metadata",
    "request_fingerprint",
    "runs_table",
    "schedule_state_table",
    "schedule_ticks_table",
    "schema_version_table",
    "upgrade",
    "watermarks_table",
]
