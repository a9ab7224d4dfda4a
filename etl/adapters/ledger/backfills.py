"""Backfills in the ledger: a backfill and its runs, recorded together."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, Engine, select

from etl.adapters.ledger.locks import BACKFILL_LOCK_ID, lock_for_transaction
from etl.adapters.ledger.rows import load_backfill, load_run, run_from_row
from etl.adapters.ledger.runs import request_fingerprint
from etl.adapters.ledger.schema import backfills_table, runs_table
from etl.domain.backfills import Backfill
from etl.domain.clock import utc_now
from etl.domain.errors import BackfillConflict
from etl.domain.runs import Run, RunState, Trigger


class BackfillsLedger:
    """The backfills table, and the runs of each date."""

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
        dates: Sequence[date],
        planned_on: Mapping[date, str | None] | None = None,
    ) -> tuple[Backfill, list[Run]]:
        """Record a backfill and one queued run per date, in one transaction.

        ``planned_on``: the latest run id of each date in ``[start, end]`` that the plan
        was decided on (None: none). Under a per-pipeline lock, if any date's latest run
        is no longer that one, nothing is recorded and BackfillConflict is raised: two
        backfills planned at once cannot both start the same date.
        """
        moment = utc_now()
        backfill_id = str(uuid.uuid4())
        with self.engine.begin() as conn:
            if planned_on is not None:
                lock_for_transaction(conn, BACKFILL_LOCK_ID, pipeline)
                now_latest = {
                    day: run.id
                    for day, run in _latest_runs_by_date(conn, pipeline, start, end).items()
                }
                changed = sorted(
                    day
                    for day in set(now_latest) | set(planned_on)
                    if now_latest.get(day) != planned_on.get(day)
                )
                if changed:
                    raise BackfillConflict(
                        f"runs of {pipeline} for {', '.join(map(str, changed[:5]))} started "
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
            for logical_date in dates:
                run_id = str(uuid.uuid4())
                conn.execute(
                    runs_table.insert().values(
                        id=run_id,
                        pipeline=pipeline,
                        logical_date=logical_date,
                        trigger=Trigger.BACKFILL.value,
                        state=RunState.QUEUED.value,
                        params=params,
                        request_fingerprint=request_fingerprint(pipeline, logical_date, params),
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
        """A backfill's runs in logical date order."""
        query = (
            select(runs_table)
            .where(runs_table.c.backfill_id == backfill_id)
            .order_by(runs_table.c.logical_date)
        )
        with self.engine.connect() as conn:
            return [run_from_row(row) for row in conn.execute(query).mappings()]

    def latest_runs_by_date(self, pipeline: str, start: date, end: date) -> dict[date, Run]:
        """The most recently created run of each logical date in ``[start, end]``."""
        with self.engine.connect() as conn:
            return _latest_runs_by_date(conn, pipeline, start, end)


def _latest_runs_by_date(
    conn: Connection, pipeline: str, start: date, end: date
) -> dict[date, Run]:
    query = (
        select(runs_table)
        .where(
            runs_table.c.pipeline == pipeline,
            runs_table.c.logical_date >= start,
            runs_table.c.logical_date <= end,
        )
        .order_by(runs_table.c.created_at, runs_table.c.id)
    )
    return {
        run.logical_date: run
        for run in (run_from_row(row) for row in conn.execute(query).mappings())
    }
