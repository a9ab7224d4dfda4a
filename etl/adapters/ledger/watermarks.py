"""Watermarks in the ledger: where an incremental pipeline's next run starts reading.

A watermark moves only when a run commits, in the same transaction that marks the run
succeeded, and only from that run's lower bound.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from etl.adapters.ledger.rows import aware_utc
from etl.adapters.ledger.schema import runs_table, watermarks_table
from etl.domain.clock import utc_now
from etl.domain.errors import WatermarkMoved
from etl.domain.runs import Run, RunState
from etl.domain.windows import CursorValue, CursorWindow


class WatermarksLedger:
    """The watermarks table, and the commit that moves it."""

    engine: Engine

    def watermark(self, pipeline: str) -> CursorValue | None:
        """The upper bound of the window the pipeline's last committed run read."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(watermarks_table.c.value, watermarks_table.c.position).where(
                    watermarks_table.c.pipeline == pipeline
                )
            ).one_or_none()
        return None if row is None else _cursor_value(row.value, row.position)

    def succeed_run(self, run: Run, *, watermark: CursorWindow | None, **fields: Any) -> bool:
        """Mark a committing run succeeded and, for an incremental run (``watermark``: its
        cursor window), move the pipeline's watermark from the window's lower bound to its
        upper one, in one transaction. Raises WatermarkMoved if the watermark is no longer
        at the lower bound (another run committed a window meanwhile); nothing changes
        then. False if the run was not committing."""
        moment = utc_now()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run.id, runs_table.c.state == RunState.COMMITTING.value)
                .values(
                    state=RunState.SUCCEEDED.value, updated_at=moment, finished_at=moment, **fields
                )
            ).rowcount
            if moved != 1:
                return False
            if watermark is None or watermark.high is None:
                return True  # not incremental, or an integer cursor's source still empty
            row = conn.execute(
                select(watermarks_table.c.value, watermarks_table.c.position)
                .where(watermarks_table.c.pipeline == run.pipeline)
                .with_for_update()
            ).one_or_none()
            current = None if row is None else _cursor_value(row.value, row.position)
            if current != watermark.low:
                raise WatermarkMoved(run.pipeline, watermark.low, current)
            integer = isinstance(watermark.high, int)
            values = {
                "cursor_column": watermark.column,
                "value": None if integer else watermark.high,
                "position": watermark.high if integer else None,
                "run_id": run.id,
            }
            if row is None:
                conn.execute(
                    watermarks_table.insert().values(
                        pipeline=run.pipeline, updated_at=moment, **values
                    )
                )
            else:
                conn.execute(
                    update(watermarks_table)
                    .where(watermarks_table.c.pipeline == run.pipeline)
                    .values(updated_at=moment, **values)
                )
        return True


def _cursor_value(value: datetime | None, position: int | None) -> CursorValue | None:
    # A timestamp cursor's watermark, or an integer cursor's.
    return position if position is not None else aware_utc(value)
