"""Backfills in the ledger: a backfill and its runs, recorded together."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from etl.adapters.ledger.locks import BACKFILL_LOCK_ID, lock_for_transaction
from etl.adapters.ledger.rows import load_backfill, load_run, run_from_row
from etl.adapters.ledger.runs import request_fingerprint
from etl.adapters.ledger.schema import backfills_table, runs_table
from etl.domain.backfills import Backfill
from etl.domain.clock import utc_now
from etl.domain.errors import BackfillConflict
from etl.domain.intervals import DataInterval
from etl.domain.runs import Run, RunState, Trigger


class BackfillsLedger:
    """The backfills table, and the runs of each interval."""

    engine: Engine

    def create_backfill(
        self,
        *,
        pipeline: str,
        start: date,
        end: date,
        max_active: int,
        reprocess: str,
        params: dict[str, Any],
        intervals: Sequence[tuple[DataInterval, date, str]],
        planned_on: Mapping[datetime, str | None] | None = None,
        covering: tuple[datetime, datetime] | None = None,
    ) -> tuple[Backfill, list[Run]]:
        """Record a backfill and one queued run per interval (with its logical date and
        name), in one transaction.

        ``planned_on``: the latest run id of each interval start in ``covering`` (the
        first and last start of the range) that the plan was decided on. Under a
        per-pipeline lock, if any interval's latest run is no longer that one, nothing
        is recorded and BackfillConflict is raised: two backfills planned at once cannot
        both start the same interval.
        """
        moment = utc_now()
        backfill_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            if planned_on is not None and covering is not None:
                lock_for_transaction(conn, BACKFILL_LOCK_ID, pipeline)
                now_latest = {
                    start_: run.id
                    for start_, run in _latest_runs_by_interval(conn, pipeline, *covering).items()
                }
                changed = sorted(
                    start_
                    for start_ in set(now_latest) | set(planned_on)
                    if now_latest.get(start_) != planned_on.get(start_)
                )
                if changed:
                    raise BackfillConflict(
                        f"runs of {pipeline} for intervals starting "
                        f"{', '.join(moment_.isoformat() for moment_ in changed[:5])} started "
                        "while this backfill was planned; plan it again"
                    )
            conn.execute(
                backfills_table.insert().values(
                    id=backfill_id,
                    pipeline=pipeline,
                    start_date=start,
                    end_date=end,
                    max_active=max_active,
                    reprocess=reprocess,
                    params=params,
                    created_at=moment,
                )
            )
            run_ids = []
            for interval, logical_date, name in intervals:
                run_id = str(uuid.uuid4())
                conn.execute(
                    runs_table.insert().values(
                        id=run_id,
                        pipeline=pipeline,
                        logical_date=logical_date,
                        interval_start=interval.start,
                        interval_end=interval.end,
                        trigger=Trigger.BACKFILL.value,
                        state=RunState.QUEUED.value,
                        params=params,
                        request_fingerprint=request_fingerprint(pipeline, name, params),
                        backfill_id=backfill_id,
                        created_at=moment,
                        updated_at=moment,
                    )
                )
                run_ids.append(run_id)
            backfill = load_backfill(conn, backfill_id)
            return backfill, [load_run(conn, run_id) for run_id in run_ids]

    def get_backfill(self, backfill_id: str) -> Backfill:
        """The backfill with that id; raises BackfillNotFound."""
        with self.engine.connect() as conn:
            return load_backfill(conn, backfill_id)

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        """A backfill's runs in interval order."""
        query = (
            select(runs_table)
            .where(runs_table.c.backfill_id == backfill_id)
            .order_by(runs_table.c.interval_start)
        )
        with self.engine.connect() as conn:
            return [run_from_row(row) for row in conn.execute(query).mappings()]

    def latest_runs_by_interval(
        self, pipeline: str, first: datetime, last: datetime
    ) -> dict[datetime, Run]:
        """The most recently created run of each interval starting in ``[first, last]``,
        by interval start."""
        with self.engine.connect() as conn:
            return _latest_runs_by_interval(conn, pipeline, first, last)


def _latest_runs_by_interval(
    conn: Connection, pipeline: str, first: datetime, last: datetime
) -> dict[datetime, Run]:
    query = (
        select(runs_table)
        .where(
            runs_table.c.pipeline == pipeline,
            runs_table.c.interval_start >= first,
            runs_table.c.interval_start <= last,
        )
        .order_by(runs_table.c.created_at, runs_table.c.id)
    )
    return {
        run.interval.start: run
        for run in (run_from_row(row) for row in conn.execute(query).mappings())
    }
