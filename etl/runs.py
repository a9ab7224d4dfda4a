"""Starting runs and reading them back: what the API, the CLI and Beat call."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from etl.celery_app import TASK_PLAN_RUN, EtlCelery
from etl.domain.dates import previous_day
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.ledger import Ledger
from etl.pipelines import get_pipeline

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
        already existed (a duplicate scheduled dispatch, a repeated idempotent request).
        """
        pipeline = get_pipeline(pipeline_name)
        validated = pipeline.validate_params(params or {}).model_dump(
            mode="json", exclude_none=True
        )
        if logical_date is None:
            timezone = pipeline.schedule.timezone if pipeline.schedule else "UTC"
            logical_date = previous_day(clock(), timezone)
        run, created = self.ledger.create_run(
            pipeline=pipeline.name,
            logical_date=logical_date,
            trigger=trigger,
            params=validated,
            idempotency_key=idempotency_key,
        )
        if created:
            try:
                self.enqueue(TASK_PLAN_RUN, [run.id])
            except Exception as exc:
                reason = f"could not enqueue the plan task: {type(exc).__name__}: {exc}"
                self.ledger.fail_run(run.id, reason)
                raise EnqueueFailed(f"run {run.id} failed: {reason}") from exc
        return run, created

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
        return self.ledger.get_run(run_id)


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
