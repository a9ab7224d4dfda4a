"""Runs in the ledger: recording, finding, and moving them between states.

Every move is conditional (``UPDATE ... WHERE state IN (allowed predecessors)``), so a
task delivered twice finds its move made and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine, func, select, update

from etl.adapters.ledger.rows import (
    aware_utc,
    insert_ignoring_conflicts,
    load_run,
    run_from_row,
    undone_chunk,
)
from etl.adapters.ledger.schema import chunks_table, runs_table
from etl.domain.clock import utc_now
from etl.domain.errors import IdempotencyConflict
from etl.domain.intervals import DataInterval
from etl.domain.runs import (
    RUN_STATE_ENTERED_FROM,
    TERMINAL_RUN_STATES,
    ChunkState,
    Run,
    RunState,
    Trigger,
)


def request_fingerprint(pipeline: str, interval_name: str | None, params: Mapping[str, Any]) -> str:
    """A stable hash of what a run was asked to do, to tell a retried request from a new
    one. ``interval_name`` is how the request named the run's interval (a daily run's
    date, a finer one's start), None when it named none (the interval was derived)."""
    canonical = json.dumps(
        {
            "pipeline": pipeline,
            "logical_date": interval_name,
            "params": params,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class RunsLedger:
    """The runs table: create, read, list, move."""

    engine: Engine

    def create_run(
        self,
        *,
        pipeline: str,
        interval: DataInterval,
        logical_date: date,
        trigger: Trigger,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        interval_name: str | None = None,
    ) -> tuple[Run, bool]:
        """Record a new queued run, or find the one this request duplicates.

        Returns the run and whether it was created. A scheduled run is unique per
        pipeline and interval; a request with an idempotency key already used for a
        different request raises IdempotencyConflict. ``interval_name`` is how the
        request named the interval; a request that named none (the interval was derived
        from the clock) is the same request the next day too, so a client's retry after
        midnight finds its run.
        """
        fingerprint = request_fingerprint(pipeline, interval_name, params)
        moment = utc_now()
        run_id = str(uuid.uuid4())
        values = {
            "id": run_id,
            "pipeline": pipeline,
            "logical_date": logical_date,
            "interval_start": interval.start,
            "interval_end": interval.end,
            "trigger": trigger.value,
            "state": RunState.QUEUED.value,
            "params": params,
            "idempotency_key": idempotency_key,
            "request_fingerprint": fingerprint,
            "created_at": moment,
            "updated_at": moment,
        }
        with self.engine.begin() as conn:
            inserted = conn.execute(insert_ignoring_conflicts(conn, runs_table, values)).rowcount
            if inserted == 1:
                return load_run(conn, run_id), True
            if idempotency_key is not None:
                row = (
                    conn.execute(
                        select(runs_table).where(runs_table.c.idempotency_key == idempotency_key)
                    )
                    .mappings()
                    .one_or_none()
                )
            else:
                row = (
                    conn.execute(
                        select(runs_table).where(
                            runs_table.c.pipeline == pipeline,
                            runs_table.c.interval_start == interval.start,
                            runs_table.c.trigger == Trigger.SCHEDULE.value,
                        )
                    )
                    .mappings()
                    .one_or_none()
                )
        if row is None:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise RuntimeError("run insert conflicted, but no conflicting run was found")
        if idempotency_key is not None and row["request_fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was already used for a different request "
                f"(run {row['id']})"
            )
        return run_from_row(row), False

    def get_run(self, run_id: str) -> Run:
        """The run with that id; raises RunNotFound. One statement, outside a transaction
        (no BEGIN and ROLLBACK around it): it is on every chunk's path."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return load_run(conn, run_id)

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        state: RunState | None = None,
        trigger: Trigger | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Run]:
        """The most recent runs first, optionally filtered; ``after`` is the (created_at,
        id) of the last run of the previous page (keyset pagination: stable while new
        runs arrive)."""
        query = (
            select(runs_table)
            .order_by(runs_table.c.created_at.desc(), runs_table.c.id.desc())
            .limit(limit)
        )
        if pipeline is not None:
            query = query.where(runs_table.c.pipeline == pipeline)
        if state is not None:
            query = query.where(runs_table.c.state == state.value)
        if trigger is not None:
            query = query.where(runs_table.c.trigger == trigger.value)
        if date_from is not None:
            query = query.where(runs_table.c.logical_date >= date_from)
        if date_to is not None:
            query = query.where(runs_table.c.logical_date <= date_to)
        if after is not None:
            created_at, run_id = after
            query = query.where(
                (runs_table.c.created_at < created_at)
                | ((runs_table.c.created_at == created_at) & (runs_table.c.id < run_id))
            )
        with self.engine.connect() as conn:
            return [run_from_row(row) for row in conn.execute(query).mappings()]

    def latest_run(self, pipeline: str, state: RunState | None = None) -> Run | None:
        """A pipeline's most recently created run (in that state), if any."""
        runs = self.list_runs(pipeline=pipeline, state=state, limit=1)
        return runs[0] if runs else None

    def move_run(self, run_id: str, to: RunState, **fields: Any) -> bool:
        """Move a run to ``to`` if its current state allows it; False if it did not move."""
        moment = utc_now()
        values: dict[str, Any] = {"state": to.value, "updated_at": moment, **fields}
        if to is RunState.PLANNING:
            values["started_at"] = moment
        if to in TERMINAL_RUN_STATES:
            values["finished_at"] = moment
        allowed = [state.value for state in RUN_STATE_ENTERED_FROM[to]]
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state.in_(allowed))
                .values(values)
            ).rowcount
        return moved == 1

    def claim_commit(self, run_id: str) -> bool:
        """Move a running run whose every chunk is done to committing; True for the one
        call that moved it, however many ask at once (the row lock lets one through, and
        the others find it committing). A chunk's ``finish_chunk`` commits before its
        task asks, so the last of them to finish sees every chunk done."""
        # A scalar subquery keeps undone_chunk's order (from the top), where EXISTS would
        # drop it and read from the bottom, past every done chunk.
        unfinished = undone_chunk(run_id).scalar_subquery()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == run_id,
                    runs_table.c.state == RunState.RUNNING.value,
                    runs_table.c.chunk_count.is_not(None),
                    unfinished.is_(None),
                )
                .values(state=RunState.COMMITTING.value, updated_at=utc_now())
            ).rowcount
        return moved == 1

    def fail_run(self, run_id: str, reason: str) -> bool:
        """Mark a run failed with a reason, unless it already ended."""
        return self.move_run(run_id, RunState.FAILED, reason=reason[:2000])

    def reopen_run(self, run_id: str) -> Run | None:
        """Take a failed run back for a retry: to queued, with its plan and window (if it
        was planned) kept and its unfinished chunks pending again (attempts start over).
        Queued, it waits for a place like any run, so a retry cannot overlap another run
        of a pipeline with max_active_runs. Returns the reopened run, or None if the run
        is not failed."""
        moment = utc_now()
        with self.engine.begin() as conn:
            run = load_run(conn, run_id)
            if run.state is not RunState.FAILED:
                return None
            moved = conn.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.state == RunState.FAILED.value)
                # Not started until admitted: then it gets a whole deadline of its own.
                .values(
                    state=RunState.QUEUED.value,
                    reason=None,
                    started_at=None,
                    finished_at=None,
                    updated_at=moment,
                )
            ).rowcount
            if moved != 1:
                return None
            conn.execute(
                update(chunks_table)
                .where(
                    chunks_table.c.run_id == run_id,
                    chunks_table.c.state != ChunkState.DONE.value,
                )
                .values(state=ChunkState.PENDING.value, attempts=0, error=None, updated_at=moment)
            )
            return load_run(conn, run_id)

    def active_runs(self) -> list[Run]:
        """Every run that has not ended, oldest first."""
        active = [state.value for state in RunState if state not in TERMINAL_RUN_STATES]
        query = (
            select(runs_table)
            .where(runs_table.c.state.in_(active))
            .order_by(runs_table.c.created_at)
        )
        with self.engine.connect() as conn:
            return [run_from_row(row) for row in conn.execute(query).mappings()]

    def last_activity(self, run_id: str) -> datetime:
        """When the run or any of its chunks last changed."""
        with self.engine.connect() as conn:
            run_updated = conn.execute(
                select(runs_table.c.updated_at).where(runs_table.c.id == run_id)
            ).scalar_one()
            chunk_updated = conn.execute(
                select(func.max(chunks_table.c.updated_at)).where(chunks_table.c.run_id == run_id)
            ).scalar()
        moments = [m for m in (aware_utc(run_updated), aware_utc(chunk_updated)) if m is not None]
        return max(moments)

    def run_counts(self) -> dict[tuple[str, RunState], int]:
        """How many runs each pipeline has in each state."""
        query = select(runs_table.c.pipeline, runs_table.c.state, func.count()).group_by(
            runs_table.c.pipeline, runs_table.c.state
        )
        with self.engine.connect() as conn:
            return {(p, RunState(state)): n for p, state, n in conn.execute(query)}

    def last_successes(self) -> dict[str, datetime]:
        """When each pipeline's latest successful run finished."""
        query = (
            select(runs_table.c.pipeline, func.max(runs_table.c.finished_at))
            .where(runs_table.c.state == RunState.SUCCEEDED.value)
            .group_by(runs_table.c.pipeline)
        )
        with self.engine.connect() as conn:
            return {p: aware_utc(moment) for p, moment in conn.execute(query) if moment}  # type: ignore[misc]
