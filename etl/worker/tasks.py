"""Celery tasks: check the arguments, call a step, decide retry or dead-letter.

Task bodies stay thin; the work is in ``etl.service``. Each task gets its adapters and
services from a per-process ``Services``, built lazily in the pool process (after fork)
so no database connection or S3 client is ever shared between processes. A task that
gives up ends its run through the run lifecycle (``give_up``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn, TypedDict

from celery import Task, chord, current_app, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from etl import metrics
from etl.adapters.errors import is_transient
from etl.bootstrap import Services, build_services
from etl.config import MAX_RETRY_BACKOFF_S
from etl.domain.clock import utc_now
from etl.domain.errors import ChunkNotFound, PlanTooLarge, RunNotFound
from etl.domain.retry import backoff_seconds
from etl.domain.runs import RunState, Trigger
from etl.domain.task_messages import InvalidTaskMessage, check_arguments
from etl.service import execution as steps
from etl.service.reconcile import sync_and_reconcile
from etl.worker.app import (
    TASK_COMMIT_RUN,
    TASK_PLAN_RUN,
    TASK_RECONCILE,
    TASK_START_SCHEDULED_RUN,
    TASK_TRANSFORM_CHUNK,
    EtlCelery,
    celery_enqueue,
)

logger = logging.getLogger(__name__)

# Keyed by (process id, app): a forked pool process builds its own, and an in-process
# test worker for one app never sees another app's settings.
_services: dict[tuple[int, int], Services] = {}


def services(task: Task) -> Services:
    """This process's Services for the task's app, built on first use from its Settings."""
    return _services_for(task.app)


def _services_for(app: EtlCelery) -> Services:
    key = (os.getpid(), id(app))
    if key not in _services:
        # The ledger was migrated when the worker started; tasks are sent through this app.
        _services[key] = build_services(app.settings, migrate=False, enqueue=celery_enqueue(app))
    return _services[key]


@worker_process_shutdown.connect
def _forget_process_metrics(pid: int | None = None, **_: Any) -> None:
    metrics.forget_process(pid or os.getpid())


@worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    # A forked pool process must not reuse the parent's pooled connections...
    _services.clear()
    # ...and builds its own now, before it takes work, as it loads the fast path's
    # libraries: a night's first chunks should not each pay for that. (Building opens
    # no connection; the first chunk does.)
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401

    app = current_app._get_current_object()
    if isinstance(app, EtlCelery):
        _services_for(app)


class PlanResult(TypedDict):
    """What plan_run returns: how many chunk messages it sent."""

    run_id: str
    dispatched: int


class CommitResult(TypedDict):
    """What commit_run returns: the run's state after it."""

    run_id: str
    state: str
    manifest_key: str | None


class ScheduledRunResult(TypedDict):
    """What start_scheduled_run returns: the run, and whether this call created it."""

    run_id: str
    created: bool


class ReconcileResult(TypedDict):
    """What the reconcile task returns: dead letters recorded, runs acted on."""

    dead_letters_recorded: int
    actions: list[str]


def _check_arguments(task: Task, *args: object) -> None:
    # The consumer checked a JSON message before it got here; a signed one is checked only
    # now, after its signature. A wrong argument is permanent: dead-letter it.
    try:
        check_arguments(task.name, args, {})
    except InvalidTaskMessage as exc:
        raise Reject(str(exc), requeue=False) from exc


def give_up(svc: Services, run_id: str, why: str, chunk_index: int | None = None) -> None:
    """A task gave up on its run: the chunk (if one) is failed, then the run, through
    the lifecycle (counted once, and the runs waiting for its place admitted)."""
    if chunk_index is not None:
        svc.ledger.fail_chunk(run_id, chunk_index, why)
    svc.runs.end_run(run_id, RunState.FAILED, why)


def _retry_or_reject(task: Task, exc: BaseException, on_give_up: Callable[[str], None]) -> NoReturn:
    """Retry transient errors with backoff; otherwise record the failure and send the
    message to the dead-letter exchange (never acknowledge it silently)."""
    description = f"{type(exc).__name__}: {exc}"
    settings = task.app.settings
    transient = is_transient(exc) or isinstance(exc, SoftTimeLimitExceeded)
    if transient and task.request.retries < settings.max_retries:
        countdown = backoff_seconds(
            task.request.retries, base=settings.retry_backoff_base_s, cap=MAX_RETRY_BACKOFF_S
        )
        logger.warning(
            "transient error, retry %d in %.1fs: %s",
            task.request.retries + 1,
            countdown,
            description,
        )
        metrics.TASK_RETRIES.labels(task.name).inc()
        raise task.retry(exc=exc, countdown=countdown, max_retries=settings.max_retries)
    if transient:
        description = f"retries exhausted ({settings.max_retries}): {description}"
    try:
        on_give_up(description)
    except Exception:
        # The ledger may be the very thing that failed. The message is dead-lettered all
        # the same, and the reconciler's deadline ends the run from the ledger.
        logger.exception("could not record the failure in the ledger: %s", description)
    metrics.DEAD_LETTERED.labels(task.name).inc()
    logger.error("giving up, dead-lettering: %s", description)
    raise Reject(description, requeue=False) from exc


@shared_task(name=TASK_PLAN_RUN, bind=True)
def plan_run(self: Task, run_id: str) -> PlanResult:
    """Plan a run and dispatch its chunks as a chord whose callback commits the run."""
    _check_arguments(self, run_id)
    svc = services(self)
    try:
        pending = steps.plan_run(svc, run_id)
    except RunNotFound as exc:
        raise Reject(str(exc), requeue=False) from exc
    except PlanTooLarge:
        # The step ended the run with the reason, and recorded nothing else: a refusal
        # to act on, not a message to dead-letter.
        return {"run_id": run_id, "dispatched": 0}
    except Exception as exc:
        _retry_or_reject(self, exc, lambda why: give_up(svc, run_id, f"planning failed: {why}"))
    if pending is None:
        return {"run_id": run_id, "dispatched": 0}
    commit = self.app.signature(TASK_COMMIT_RUN, args=[run_id], immutable=True)
    if not pending:
        commit.apply_async()
        return {"run_id": run_id, "dispatched": 0}
    # The header is a generator, so the chord is published as it is iterated: Celery
    # sends each header task as it is yielded and records the chord's size with the last
    # one (group._apply_tasks; lazy headers since Celery 5.2, #6576). ChunkDispatch reads
    # the run between batches and ends early once it is no longer running: the chord
    # then counts only what was sent, and its commit finds the run ended and does
    # nothing. (Dropping the chord for "the last chunk sends the commit" would work too,
    # but moves the run's completion out of one place for no gain.)
    dispatch = steps.ChunkDispatch(svc, run_id, pending)
    chord(
        self.app.signature(TASK_TRANSFORM_CHUNK, args=[run_id, chunk.index], immutable=True)
        for chunk in dispatch
    )(commit)
    return {"run_id": run_id, "dispatched": dispatch.sent}


@shared_task(name=TASK_TRANSFORM_CHUNK, bind=True)
def transform_chunk(self: Task, run_id: str, chunk_index: int) -> dict[str, Any] | None:
    """Transform one chunk into one part; returns only its key, rows, bytes and sha256."""
    _check_arguments(self, run_id, chunk_index)
    svc = services(self)
    try:
        return steps.transform_chunk(svc, run_id, chunk_index)
    except (RunNotFound, ChunkNotFound) as exc:
        raise Reject(str(exc), requeue=False) from exc
    except Exception as exc:
        _retry_or_reject(
            self,
            exc,
            lambda why: give_up(svc, run_id, f"chunk {chunk_index} failed: {why}", chunk_index),
        )


@shared_task(name=TASK_COMMIT_RUN, bind=True, ignore_result=True)
def commit_run(self: Task, run_id: str) -> CommitResult:
    """Commit a run whose chunks are all done: manifest, then _SUCCESS."""
    _check_arguments(self, run_id)
    svc = services(self)
    try:
        run = steps.commit_run(svc, run_id)
    except RunNotFound as exc:
        raise Reject(str(exc), requeue=False) from exc
    except Exception as exc:
        _retry_or_reject(self, exc, lambda why: give_up(svc, run_id, f"commit failed: {why}"))
    return {"run_id": run_id, "state": run.state.value, "manifest_key": run.manifest_key}


@shared_task(name=TASK_START_SCHEDULED_RUN, bind=True, ignore_result=True)
def start_scheduled_run(
    self: Task, pipeline: str, interval: str | None = None
) -> ScheduledRunResult:
    """Beat's entry: start the run of a pipeline for the interval of a schedule slot, named
    by its date (daily) or start (finer); a duplicate dispatch finds the existing run."""
    _check_arguments(self, pipeline, interval)
    svc = services(self)
    try:
        run, created = svc.runs.start_run(pipeline, interval=interval, trigger=Trigger.SCHEDULE)
    except ValueError as exc:  # an interval the pipeline does not have: no retry mends it
        raise Reject(str(exc), requeue=False) from exc
    except Exception as exc:
        _retry_or_reject(self, exc, lambda why: None)
    return {"run_id": run.id, "created": created}


@shared_task(name=TASK_RECONCILE, bind=True, ignore_result=True)
def reconcile_runs(self: Task) -> ReconcileResult:
    """Periodic (Beat, every minute): record dead letters, finish or fail stuck runs."""
    svc = services(self)
    settings = self.app.settings
    done = sync_and_reconcile(
        svc.dead_letters,
        svc.runs,
        now=utc_now(),
        stale_after_s=settings.reconcile_stale_s,
        deadline_s=settings.run_deadline_s,
    )
    for action in done.actions:
        logger.warning("reconciler: %s", action)
    return {"dead_letters_recorded": done.dead_letters_recorded, "actions": done.actions}
