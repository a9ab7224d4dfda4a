"""Backfills: one run per data interval over a range, started and cancelled together.

Their runs live and end like any other, through the run lifecycle (``RunService``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from etl.domain.backfills import Backfill, IntervalPlan, Reprocess, plan_backfill
from etl.domain.errors import EnqueueFailed
from etl.domain.runs import Run, RunState
from etl.pipelines import get_pipeline
from etl.service.lifecycle import RunService


def start_backfill(
    runs: RunService,
    pipeline_name: str,
    *,
    start: date | datetime,
    end: date | datetime,
    max_active: int,
    reprocess: Reprocess = Reprocess.NONE,
    params: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> tuple[Backfill | None, list[IntervalPlan]]:
    """Start one run per data interval from ``start`` to ``end`` (two dates: every
    interval on those days; two timestamps: the intervals they start and those between),
    at most ``max_active`` of them active at once (the pipeline's own max_active_runs
    also holds).

    Returns the backfill (None for a dry run or when every interval is skipped) and what
    was decided for each interval. Raises UnknownPipeline, ValueError for a bad range,
    pydantic.ValidationError for bad params, BackfillConflict, or EnqueueFailed (the
    backfill's runs are failed then, so nothing is left half-started).
    """
    pipeline = get_pipeline(pipeline_name)
    if max_active < 1:
        raise ValueError(f"max_active must be at least 1, got {max_active}")
    validated = pipeline.validate_params(params or {}).model_dump(mode="json", exclude_none=True)
    grain = pipeline.grain
    intervals = grain.in_range(start, end)
    if not intervals:
        raise ValueError(f"no interval of {pipeline.name} ({grain.describe()}) starts in range")
    covering = (intervals[0].start, intervals[-1].start)
    ledger = runs.ledger
    latest = ledger.latest_runs_by_interval(pipeline.name, *covering)
    named = [(i, grain.logical_date(i), grain.name(i)) for i in intervals]
    plans = plan_backfill(named, latest, reprocess)
    to_run = [(plan.interval, plan.logical_date, plan.name) for plan in plans if plan.run]
    if dry_run or not to_run:
        return None, plans
    backfill, created = ledger.create_backfill(
        pipeline=pipeline.name,
        start=named[0][1],
        end=named[-1][1],
        max_active=max_active,
        reprocess=reprocess.value,
        params=validated,
        intervals=to_run,
        planned_on={moment: run.id for moment, run in latest.items()},
        covering=covering,
    )
    try:
        runs.admit_waiting(pipeline.name)
    except Exception as exc:
        reason = f"could not enqueue the backfill: {type(exc).__name__}: {exc}"
        runs.end_runs([run.id for run in created], RunState.FAILED, reason)
        raise EnqueueFailed(f"backfill {backfill.id} failed: {reason}") from exc
    return backfill, plans


def cancel_backfill(runs: RunService, backfill_id: str) -> list[Run]:
    """Cancel every run of a backfill that has not ended, the waiting ones first so none
    of them is started meanwhile; returns the backfill's runs. Raises BackfillNotFound."""
    ledger = runs.ledger
    ledger.get_backfill(backfill_id)
    unfinished = [run for run in ledger.backfill_runs(backfill_id) if not run.is_terminal]
    waiting_first = sorted(unfinished, key=lambda run: run.state is not RunState.QUEUED)
    runs.end_runs([run.id for run in waiting_first], RunState.CANCELLED, "backfill cancelled")
    return ledger.backfill_runs(backfill_id)
