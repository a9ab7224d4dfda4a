"""Starting runs and reading them back: what the API, the CLI and Beat call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from etl.adapters.ledger import Ledger
from etl.domain.backfills import Backfill, DatePlan, Reprocess, dates_between, plan_backfill
from etl.domain.dates import previous_day
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.domain.schedules import logical_date_for
from etl.pipelines import get_pipeline
from etl.worker.app import TASK_PLAN_RUN, EtlCelery

logger = logging.getLogger(__name__)

# Sends a task by name with positional JSON arguments; raises if the broker refused it.
Enqueue = Callable[[str, list[Any]], None]


def celery_enqueue(app: EtlCelery) -> Enqueue:
    """The Enqueue port on a Celery app: publish by task name, routed by the app."""

    def enqueue(name: str, args: list[Any]) -> None:
        app.send_task(name, args=args)

    return enqueue


class RunNotRetryable(RuntimeError):
    """Only a failed run can be retried."""


class RunNotCancellable(RuntimeError):
    """A run that has ended cannot be cancelled."""


class EnqueueFailed(RuntimeError):
    """The run was recorded but its first task could not be sent; the run is failed."""


# The reason of a run whose first task the broker refused (it never started).
ENQUEUE_FAILED = "could not enqueue the plan task"


def _never_sent(run: Run) -> bool:
    return (
        run.state is RunState.FAILED
        and run.chunk_count is None
        and (run.reason or "").startswith(ENQUEUE_FAILED)
    )


class RunService:
    """Creates runs in the ledger and sends their first task."""

    def __init__(self, ledger: Ledger, enqueue: Enqueue) -> None:
        self.ledger = ledger
        self.enqueue = enqueue

    def start_run(
        self,
        pipeline_name: str,
        *,
        logical_date: date | None = None,
        params: dict[str, Any] | None = None,
        trigger: Trigger = Trigger.MANUAL,
        idempotency_key: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> tuple[Run, bool]:
        """Record a run and enqueue its planning; returns (run, created).

        Raises UnknownPipeline, pydantic.ValidationError for bad params,
        IdempotencyConflict, or EnqueueFailed. Nothing is enqueued for a run that
        already existed (a duplicate scheduled dispatch, a repeated idempotent request),
        except a repeated idempotent request whose first publish failed: it is sent.
        """
        pipeline = get_pipeline(pipeline_name)
        validated = pipeline.validate_params(params or {}).model_dump(
            mode="json", exclude_none=True
        )
        logical_date_requested = logical_date is not None
        if logical_date is None:
            logical_date = (
                logical_date_for(pipeline.schedule, clock())
                if pipeline.schedule
                else previous_day(clock(), "UTC")
            )
        run, created = self.ledger.create_run(
            pipeline=pipeline.name,
            logical_date=logical_date,
            trigger=trigger,
            params=validated,
            idempotency_key=idempotency_key,
            logical_date_requested=logical_date_requested,
        )
        if not created:
            # A client repeating a request whose first publish the broker refused gets
            # it sent now: the run never started, so this is its first real attempt.
            if idempotency_key is not None and _never_sent(run):
                return self.retry_run(run.id), True
            return run, False
        # Where a run's trail starts: `grep <run id>` over every process's log finds it.
        logger.info(
            "created run %s: %s dt=%s (%s)",
            run.id,
            run.pipeline,
            run.logical_date,
            run.trigger,
            extra={"run_id": run.id},
        )
        try:
            self.enqueue(TASK_PLAN_RUN, [run.id])
        except Exception as exc:
            reason = f"{ENQUEUE_FAILED}: {type(exc).__name__}: {exc}"
            self.ledger.fail_run(run.id, reason)
            raise EnqueueFailed(f"run {run.id} failed: {reason}") from exc
        return run, True

    def retry_run(self, run_id: str) -> Run:
        """Re-run a failed run's unfinished chunks, then commit it.

        The run goes back to queued (never planned) or running (planned), its unfinished
        chunks back to pending, and plan_run dispatches them again with a new commit.
        Raises RunNotFound, RunNotRetryable or EnqueueFailed.
        """
        run = self.ledger.get_run(run_id)
        reopened = self.ledger.reopen_run(run_id)
        if reopened is None:
            raise RunNotRetryable(f"run {run_id} is {run.state}; only a failed run can be retried")
        try:
            self.enqueue(TASK_PLAN_RUN, [run_id])
        except Exception as exc:
            reason = f"could not enqueue the retry: {type(exc).__name__}: {exc}"
            self.ledger.fail_run(run_id, reason)
            raise EnqueueFailed(f"run {run_id} failed: {reason}") from exc
        return reopened

    def cancel_run(self, run_id: str) -> Run:
        """Stop a run: chunks not yet started are skipped and nothing is committed.

        A chunk already transforming finishes its part, which no manifest will name.
        Raises RunNotFound or RunNotCancellable.
        """
        if not self.ledger.move_run(run_id, RunState.CANCELLED, reason="cancelled by request"):
            run = self.ledger.get_run(run_id)
            if run.state is not RunState.CANCELLED:
                raise RunNotCancellable(
                    f"run {run_id} is {run.state} and can no longer be cancelled"
                )
        run = self.ledger.get_run(run_id)
        dispatch_waiting_runs(self.ledger, self.enqueue, run.pipeline)
        return run

    def cancel_backfill(self, backfill_id: str) -> list[Run]:
        """Cancel every run of a backfill that has not ended, the waiting ones first so
        none of them is started meanwhile; returns the backfill's runs. Raises
        BackfillNotFound."""
        self.ledger.get_backfill(backfill_id)
        runs = self.ledger.backfill_runs(backfill_id)
        for run in sorted(runs, key=lambda r: r.state is not RunState.QUEUED):
            if not run.is_terminal:
                self.ledger.move_run(run.id, RunState.CANCELLED, reason="backfill cancelled")
        # Places it held are free now: runs of the pipeline waiting for one get their plan.
        for pipeline in {run.pipeline for run in runs}:
            dispatch_waiting_runs(self.ledger, self.enqueue, pipeline)
        return self.ledger.backfill_runs(backfill_id)

    def start_backfill(
        self,
        pipeline_name: str,
        *,
        start: date,
        end: date,
        max_active: int,
        reprocess: Reprocess = Reprocess.NONE,
        params: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Backfill | None, list[DatePlan]]:
        """Start one run per logical date from ``start`` to ``end``, at most ``max_active``
        of them active at once (the pipeline's own max_active_runs also holds).

        Returns the backfill (None for a dry run or when every date is skipped) and what
        was decided for each date. Raises UnknownPipeline, ValueError for a bad range,
        pydantic.ValidationError for bad params, or EnqueueFailed (the backfill's runs
        are failed then, so nothing is left half-started).
        """
        pipeline = get_pipeline(pipeline_name)
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, got {max_active}")
        validated = pipeline.validate_params(params or {}).model_dump(
            mode="json", exclude_none=True
        )
        dates = dates_between(start, end)
        latest = self.ledger.latest_runs_by_date(pipeline.name, start, end)
        plans = plan_backfill(dates, latest, reprocess)
        to_run = [plan.logical_date for plan in plans if plan.run]
        if dry_run or not to_run:
            return None, plans
        backfill, runs = self.ledger.create_backfill(
            pipeline=pipeline.name,
            start=start,
            end=end,
            max_active=max_active,
            reprocess=reprocess.value,
            params=validated,
            dates=to_run,
            planned_on={day: run.id for day, run in latest.items()},
        )
        try:
            dispatch_waiting_runs(self.ledger, self.enqueue, pipeline.name)
        except Exception as exc:
            reason = f"could not enqueue the backfill: {type(exc).__name__}: {exc}"
            for run in runs:
                self.ledger.fail_run(run.id, reason)
            raise EnqueueFailed(f"backfill {backfill.id} failed: {reason}") from exc
        return backfill, plans


def dispatch_waiting_runs(ledger: Ledger, enqueue: Enqueue, pipeline_name: str) -> list[str]:
    """Send ``plan_run`` for the queued runs of a pipeline that now have a free place
    (after a run ended, or when a backfill starts); returns their ids."""
    pipeline = get_pipeline(pipeline_name)
    waiting = ledger.runs_to_admit(pipeline.name, pipeline.max_active_runs)
    for run_id in waiting:
        enqueue(TASK_PLAN_RUN, [run_id])
    return waiting


def wait_for_run(
    ledger: Ledger,
    run_id: str,
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    on_progress: Callable[[Run, dict[ChunkState, int]], None] | None = None,
    still_working: Callable[[], str | None] | None = None,
) -> Run:
    """Poll the ledger until the run ends; raises TimeoutError, or RuntimeError when
    ``still_working`` reports (by returning a reason) that nothing will finish it."""
    deadline = time.monotonic() + timeout_s
    last_seen: tuple[RunState, dict[ChunkState, int]] | None = None
    while True:
        run = ledger.get_run(run_id)
        counts = ledger.chunk_counts(run_id)
        if on_progress is not None and (run.state, counts) != last_seen:
            on_progress(run, counts)
            last_seen = (run.state, counts)
        if run.is_terminal:
            return run
        if still_working is not None and (problem := still_working()):
            raise RuntimeError(f"run {run_id} cannot finish: {problem}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {run.state} after {timeout_s:.0f}s")
        time.sleep(poll_s)
