"""A run's life in one place: started, retried, cancelled, ended, and the runs waiting
behind it admitted. What the API, the CLI, Beat and the worker's steps call.

Every way a run ends goes through ``RunService``: ``end_runs`` (failed or cancelled) or
``run_succeeded`` (after the commit recorded success). Each counts
``etl_runs_finished_total`` once, by the call that moved the run, and then lets the runs
waiting for the place it held start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Any, NamedTuple

from etl import metrics
from etl.domain.clock import utc_now
from etl.domain.errors import EnqueueFailed, RunNotCancellable, RunNotRetryable, UnknownPipeline
from etl.domain.runs import ChunkState, Run, RunState, Trigger
from etl.domain.task_messages import TASK_COMMIT_RUN, TASK_PLAN_RUN
from etl.pipelines import get_pipeline
from etl.service.ports import Enqueue, LedgerPort

logger = logging.getLogger(__name__)


# The reason of a run whose first task the broker refused (it never started).
ENQUEUE_FAILED = "could not enqueue the plan task"
# The ways a run ends other than by its commit.
ENDINGS = frozenset({RunState.FAILED, RunState.CANCELLED})


class Ending(NamedTuple):
    """A run after ``end_runs``: ``moved`` when this call ended it (and counted it)."""

    run: Run
    moved: bool


def _never_sent(run: Run) -> bool:
    return (
        run.state is RunState.FAILED
        and run.chunk_count is None
        and (run.reason or "").startswith(ENQUEUE_FAILED)
    )


class RunService:
    """Creates runs in the ledger, sends their first task, and ends them."""

    def __init__(self, ledger: LedgerPort, enqueue: Enqueue) -> None:
        self.ledger = ledger
        self.enqueue = enqueue

    def start_run(
        self,
        pipeline_name: str,
        *,
        interval: str | date | datetime | None = None,
        params: dict[str, Any] | None = None,
        trigger: Trigger = Trigger.MANUAL,
        idempotency_key: str | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> tuple[Run, bool]:
        """Record a run and enqueue its planning; returns (run, created).

        ``interval`` names the run's data interval: a date for a daily pipeline, the
        timestamp that starts it for a finer one (or their text); by default the last
        interval that has ended. Raises UnknownPipeline, ValueError for an interval the
        pipeline does not have, pydantic.ValidationError for bad params,
        IdempotencyConflict, or EnqueueFailed. Nothing is enqueued for a run that
        already existed (a duplicate scheduled dispatch, a repeated idempotent request),
        except a repeated idempotent request whose first publish failed: it is sent.
        """
        pipeline = get_pipeline(pipeline_name)
        validated = pipeline.validate_params(params or {}).model_dump(
            mode="json", exclude_none=True
        )
        grain = pipeline.grain
        data_interval = grain.resolve(interval, clock())
        run, created = self.ledger.create_run(
            pipeline=pipeline.name,
            interval=data_interval,
            logical_date=grain.logical_date(data_interval),
            trigger=trigger,
            params=validated,
            idempotency_key=idempotency_key,
            interval_name=None if interval is None else grain.name(data_interval),
        )
        if not created:
            # A client repeating a request whose first publish the broker refused gets
            # it sent now: the run never started, so this is its first real attempt.
            if idempotency_key is not None and _never_sent(run):
                return self.retry_run(run.id), True
            return run, False
        # Where a run's trail starts: `grep <run id>` over every process's log finds it.
        logger.info(
            "created run %s: %s %s (%s)",
            run.id,
            run.pipeline,
            grain.name(run.interval),
            run.trigger,
            extra={"run_id": run.id},
        )
        self._send_plan(run.id, ENQUEUE_FAILED)
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
        self._send_plan(run_id, "could not enqueue the retry")
        return reopened

    def _send_plan(self, run_id: str, failure: str) -> None:
        """Send a run's plan task; if the broker refuses it, the run is failed with
        ``failure`` and the error, and EnqueueFailed raised."""
        try:
            self.enqueue(TASK_PLAN_RUN, [run_id])
        except Exception as exc:
            reason = f"{failure}: {type(exc).__name__}: {exc}"
            self.end_run(run_id, RunState.FAILED, reason)
            raise EnqueueFailed(f"run {run_id} failed: {reason}") from exc

    def cancel_run(self, run_id: str) -> Run:
        """Stop a run: chunks not yet started are skipped and nothing is committed.

        A chunk already transforming finishes its part, which no manifest will name.
        Raises RunNotFound or RunNotCancellable.
        """
        self.ledger.get_run(run_id)  # RunNotFound before anything is done
        run = self.end_run(run_id, RunState.CANCELLED, "cancelled by request")
        if run.state is not RunState.CANCELLED:
            raise RunNotCancellable(f"run {run_id} is {run.state} and can no longer be cancelled")
        return run

    def end_run(self, run_id: str, state: RunState, reason: str) -> Run:
        """Fail or cancel a run that has not ended (see ``end_runs``); returns the run
        as it is now."""
        return self.end_runs([run_id], state, reason)[0].run

    def end_runs(self, run_ids: Iterable[str], state: RunState, reason: str) -> list[Ending]:
        """Fail or cancel runs that have not ended, in the order given, with the reason.

        The one way a run ends other than by its commit: each run's move is conditional
        (a run that already ended keeps its state), counted in ``etl_runs_finished_total``
        by the call that made it, and afterwards the runs waiting for a place in those
        runs' pipelines are admitted, once per pipeline.
        """
        if state not in ENDINGS:
            raise ValueError(f"a run is ended as failed or cancelled, not {state}")
        endings = []
        for run_id in run_ids:
            if state is RunState.FAILED:
                moved = self.ledger.fail_run(run_id, reason)
            else:
                moved = self.ledger.move_run(run_id, state, reason=reason[:2000])
            run = self.ledger.get_run(run_id)
            if moved:
                metrics.RUNS_FINISHED.labels(run.pipeline, state.value).inc()
                logger.info("run %s %s: %s", run_id, state.value, reason, extra={"run_id": run_id})
            endings.append(Ending(run, moved))
        # Admitted even when another process ended a run first: it may have died before
        # admitting, and plan_run decides again under the lock, so a second send is safe.
        self._admit_after_end({ending.run.pipeline for ending in endings})
        return endings

    def run_succeeded(self, run: Run) -> None:
        """Count a run the commit has just recorded succeeded (by the call that recorded
        it: once), and admit the runs waiting for its place."""
        metrics.RUNS_FINISHED.labels(run.pipeline, RunState.SUCCEEDED.value).inc()
        if run.started_at and run.finished_at:
            seconds = (run.finished_at - run.started_at).total_seconds()
            metrics.RUN_DURATION.labels(run.pipeline).observe(seconds)
        # Its dead letters (a chunk that died before a retry succeeded) are resolved now,
        # so the alert on them clears with the success (the reconciler's sync is the
        # backstop). Imported here: etl.service.dead_letters imports this module.
        from etl.service.dead_letters import resolve_dead_letters

        try:
            resolve_dead_letters(self.ledger, run.id)
        except Exception:
            logger.warning("could not resolve the dead letters of run %s", run.id, exc_info=True)
        self._admit_after_end({run.pipeline})

    def commit_if_complete(self, run_id: str, *, again: bool = False) -> bool:
        """Send ``commit_run`` for a run whose every chunk is done, once: the call whose
        claim moves the run from running to committing sends it (of any number at once,
        one claims). With ``again`` (a redelivered chunk message, whose first delivery may
        have died between its claim and its send) a run already committing is sent its
        commit again, which is harmless. Returns whether a commit was sent. A send the
        broker refuses is logged, not raised: the chunk's work is recorded, and the
        reconciler sends the commit of a run left committing."""
        if not self.ledger.claim_commit(run_id) and (
            not again or self.ledger.get_run(run_id).state is not RunState.COMMITTING
        ):
            return False
        try:
            self.enqueue(TASK_COMMIT_RUN, [run_id])
        except Exception:
            logger.exception("could not send the commit of run %s: the reconciler will", run_id)
            return False
        return True

    def admit_waiting(self, pipeline_name: str) -> list[str]:
        """Send ``plan_run`` for the queued runs of a pipeline that have a free place
        now; returns their ids. Raises if the broker refuses a send."""
        return dispatch_waiting_runs(self.ledger, self.enqueue, pipeline_name)

    def _admit_after_end(self, pipelines: Iterable[str]) -> None:
        # "Let waiting runs start after one ends", the one place it is written. Best
        # effort: the run has ended whatever happens here, and the reconciler sends the
        # plan of a queued run with a free place every minute.
        for pipeline in sorted(pipelines):
            try:
                started = self.admit_waiting(pipeline)
            except UnknownPipeline:
                continue  # removed from the code: nothing of it is admitted any more
            except Exception:
                logger.exception("could not start the runs of %s waiting for a place", pipeline)
                continue
            if started:
                logger.info("a run of %s ended: sent plan for %d waiting", pipeline, len(started))


def dispatch_waiting_runs(ledger: LedgerPort, enqueue: Enqueue, pipeline_name: str) -> list[str]:
    """Send ``plan_run`` for the queued runs of a pipeline that now have a free place
    (after a run ended, or when a backfill starts); returns their ids."""
    pipeline = get_pipeline(pipeline_name)
    waiting = ledger.runs_to_admit(pipeline.name, pipeline.max_active_runs)
    for run_id in waiting:
        enqueue(TASK_PLAN_RUN, [run_id])
    return waiting


def wait_for_run(
    ledger: LedgerPort,
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
