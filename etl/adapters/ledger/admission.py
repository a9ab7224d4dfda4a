"""Admission in the ledger: the counting and locking around etl.domain.admission's rule."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, func, select, update

from etl.adapters.ledger.locks import ADMISSION_LOCK_ID, lock_for_transaction
from etl.adapters.ledger.rows import load_run, run_from_row
from etl.adapters.ledger.schema import backfills_table, runs_table
from etl.domain.admission import Candidate, admissible, waits_for_a_place
from etl.domain.clock import utc_now
from etl.domain.runs import ACTIVE_RUN_STATES, RunState


class AdmissionLedger:
    """Moving queued runs to planning when their pipeline and backfill have room."""

    engine: Engine

    def admit_run(self, run_id: str, pipeline_limit: int | None) -> bool:
        """Move a queued run to planning if its pipeline and its backfill have room.

        Active runs are counted under a per-pipeline lock (an advisory transaction lock
        on PostgreSQL), so two plan tasks cannot both take the last place. False: the
        run stays queued (or was not queued).
        """
        moment = utc_now()
        with self.engine.begin() as conn:
            run = load_run(conn, run_id)
            if run.state is not RunState.QUEUED:
                return False
            lock_for_transaction(conn, ADMISSION_LOCK_ID, run.pipeline)
            candidate = Candidate(run.id, run.backfill_id)
            room = admissible(
                [candidate],
                active=_active_counts(conn, run.pipeline),
                pipeline_limit=pipeline_limit,
                backfill_limits=_backfill_limits(conn, {run.backfill_id}),
            )
            if not room:
                return False
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state == RunState.QUEUED.value)
                .values(state=RunState.PLANNING.value, started_at=moment, updated_at=moment)
            ).rowcount
        return moved == 1

    def runs_to_admit(self, pipeline: str, pipeline_limit: int | None) -> list[str]:
        """Queued runs of a pipeline that wait for a place and have one now, oldest
        interval first: whom to send ``plan_run`` (which decides again, under the
        lock). A run that nothing limits is not waiting, and is left alone."""
        with self.engine.connect() as conn:
            queued = [
                run_from_row(row)
                for row in conn.execute(
                    select(runs_table)
                    .where(
                        runs_table.c.pipeline == pipeline,
                        runs_table.c.state == RunState.QUEUED.value,
                    )
                    .order_by(runs_table.c.interval_start, runs_table.c.created_at)
                ).mappings()
            ]
            waiting = [
                candidate
                for candidate in (Candidate(run.id, run.backfill_id) for run in queued)
                if waits_for_a_place(candidate, pipeline_limit)
            ]
            if not waiting:
                return []
            active = _active_counts(conn, pipeline)
            backfill_limits = _backfill_limits(conn, {run.backfill_id for run in waiting})
        return admissible(
            waiting, active=active, pipeline_limit=pipeline_limit, backfill_limits=backfill_limits
        )

    def pipelines_with_queued_runs(self) -> list[str]:
        """Pipelines that have at least one queued run."""
        query = (
            select(runs_table.c.pipeline)
            .where(runs_table.c.state == RunState.QUEUED.value)
            .distinct()
            .order_by(runs_table.c.pipeline)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())


def _active_counts(conn: Connection, pipeline: str) -> dict[str | None, int]:
    """Active runs of a pipeline by backfill (None: not part of a backfill)."""
    rows = conn.execute(
        select(runs_table.c.backfill_id, func.count())
        .where(
            runs_table.c.pipeline == pipeline,
            runs_table.c.state.in_([state.value for state in ACTIVE_RUN_STATES]),
        )
        .group_by(runs_table.c.backfill_id)
    )
    return {backfill_id: count for backfill_id, count in rows}


def _backfill_limits(conn: Connection, ids: set[str | None]) -> dict[str, int]:
    """max_active of each of these backfills."""
    wanted = [backfill_id for backfill_id in ids if backfill_id is not None]
    if not wanted:
        return {}
    rows = conn.execute(
        select(backfills_table.c.id, backfills_table.c.max_active).where(
            backfills_table.c.id.in_(wanted)
        )
    )
    return {backfill_id: limit for backfill_id, limit in rows}
