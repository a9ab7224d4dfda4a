"""Backfills: one run per data interval over a range, at most N of them active at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from etl.domain.intervals import DataInterval
from etl.domain.runs import TERMINAL_RUN_STATES, Run, RunState


class Reprocess(StrEnum):
    """Which intervals that already have a run get a new one."""

    NONE = "none"  # only intervals that have never had a run
    FAILED = "failed"  # and intervals whose latest run failed or was cancelled
    ALL = "all"  # every interval (except one with a run still active)


@dataclass(frozen=True)
class Backfill:
    """A recorded backfill request."""

    id: str
    pipeline: str
    start: date
    end: date
    max_active: int
    reprocess: Reprocess
    params: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class IntervalPlan:
    """What a backfill does for one data interval (``name``: how a user names it, its
    date for a daily pipeline, its start for a finer one)."""

    interval: DataInterval
    logical_date: date
    name: str
    run: bool
    reason: str
    existing_run_id: str | None = None


def plan_backfill(
    intervals: list[tuple[DataInterval, date, str]],
    latest_runs: dict[datetime, Run],
    reprocess: Reprocess,
) -> list[IntervalPlan]:
    """Decide, per interval (with its logical date and name), whether the backfill
    starts a run, and why; ``latest_runs`` by interval start."""
    plans = []
    for interval, logical_date, name in intervals:
        existing = latest_runs.get(interval.start)
        if existing is None:
            plans.append(IntervalPlan(interval, logical_date, name, True, "no run yet"))
            continue
        state = existing.state
        seen = f"latest run {existing.id} {state}"
        if state not in TERMINAL_RUN_STATES:
            run, reason = False, f"skipped: {seen} (still active)"
        elif reprocess is Reprocess.ALL:
            run, reason = True, f"reprocess all: {seen}"
        elif reprocess is Reprocess.FAILED and state is not RunState.SUCCEEDED:
            run, reason = True, f"reprocess failed: {seen}"
        else:
            run, reason = False, f"skipped: {seen}"
        plans.append(IntervalPlan(interval, logical_date, name, run, reason, existing.id))
    return plans


@dataclass(frozen=True)
class BackfillProgress:
    """How far a backfill's runs have got."""

    total: int
    by_state: dict[RunState, int] = field(default_factory=dict)
    rows_written: int = 0
    chunks_done: int = 0
    chunks_planned: int = 0

    @classmethod
    def of(cls, runs: list[Run], chunks_done: Mapping[str, int] | None = None) -> BackfillProgress:
        """Count a backfill's runs by state, and the chunks of the planned ones
        (``chunks_done``: done chunks of the runs still active, by run id)."""
        planned = [run for run in runs if run.chunk_count is not None]
        return cls(
            total=len(runs),
            by_state=dict(Counter(run.state for run in runs)),
            rows_written=sum(run.rows_written or 0 for run in runs),
            chunks_done=sum(
                run.chunk_count or 0
                if run.state is RunState.SUCCEEDED
                else (chunks_done or {}).get(run.id, 0)
                for run in planned
            ),
            chunks_planned=sum(run.chunk_count or 0 for run in planned),
        )

    @property
    def finished(self) -> int:
        """Runs that have ended, whichever way."""
        return sum(n for state, n in self.by_state.items() if state in TERMINAL_RUN_STATES)

    @property
    def done(self) -> bool:
        """True once every run has ended."""
        return self.finished == self.total

    @property
    def succeeded(self) -> bool:
        """True once every run has succeeded."""
        return self.by_state.get(RunState.SUCCEEDED, 0) == self.total
