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
from etl.adapters.ledger.migrations import upgrade
from etl.adapters.ledger.runs import RunsLedger
from etl.adapters.ledger.schema import SCHEMA_VERSION
from etl.adapters.ledger.watermarks import WatermarksLedger


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


__all__ = ["SCHEMA_VERSION", "Ledger", "upgrade"]
