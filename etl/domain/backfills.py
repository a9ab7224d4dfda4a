"""Backfills: one run per logical date over a range, at most N of them active at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from etl.domain.runs import TERMINAL_RUN_STATES, Run, RunState

# A backfill longer than this is almost certainly a typo in a year.
MAX_BACKFILL_DAYS = 3660


class Reprocess(StrEnum):
    """Which dates that already have a run get a new one."""

    NONE = "none"  # only dates that have never had a run
    FAILED = "failed"  # and dates whose latest run failed or was cancelled
    ALL = "all"  # every date (except one with a run still active)


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
class DatePlan:
    """What a backfill does for one logical date."""

    logical_date: date
    run: bool
    reason: str
    existing_run_id: str | None = None


def dates_between(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive; raises ValueError for a bad range."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    days = (end - start).days + 1
    if days > MAX_BACKFILL_DAYS:
        raise ValueError(f"a backfill covers at most {MAX_BACKFILL_DAYS} days, not {days}")
    return [start + timedelta(days=offset) for offset in range(days)]


def plan_backfill(
    dates: list[date], latest_runs: dict[date, Run], reprocess: Reprocess
) -> list[DatePlan]:
    """Decide, per date, whether the backfill starts a run, and why."""
    plans = []
    for logical_date in dates:
        existing = latest_runs.get(logical_date)
        if existing is None:
            plans.append(DatePlan(logical_date, True, "no run yet"))
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
        plans.append(DatePlan(logical_date, run, reason, existing.id))
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
