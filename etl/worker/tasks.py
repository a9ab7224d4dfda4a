"""Celery tasks: check the arguments, call a step, decide retry or dead-letter.

Task bodies stay thin; the work is in ``etl.service``. Each task gets its adapters and
services from a per-process ``Services``, built lazily in the pool process (after fork)
so no database connection or S3 client is ever shared between processes. A task that
gives up ends its run through the run lifecycle (``give_up``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypedDict

from celery import Task, current_app, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from etl import metrics
from etl.adapters.errors import is_transient
from etl.adapters.s3 import make_s3_client
from etl.bootstrap import Services, build_services
from etl.config import MAX_RETRY_BACKOFF_S
from etl.domain.clock import utc_now
from etl.domain.errors import ChunkNotFound, PlanTooLarge, RunNotFound
from etl.domain.failures import failure_text
from etl.domain.retry import backoff_seconds
from etl.domain.runs import RunState, Trigger
from etl.domain.task_messages import InvalidTaskMessage, check_arguments
from etl.pipelines import load_pipeline_modules
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
    close_kept_publishers,
    kept_task_batches,
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
def _end_pool_process(pid: int | None = None, **_: Any) -> None:
    metrics.forget_process(pid or os.getpid())
    app = current_app._get_current_object()
    if isinstance(app, EtlCelery):
        close_kept_publishers(app)


def _load_fast_path_libraries() -> None:
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet  # noqa: F401


@worker_init.connect
def _load_before_forking(sender: Any = None, **_: Any) -> None:
    # In the worker's main process, before its pool processes fork: what each of them
    # needs is loaded once, here, and shared by the fork (the fast path's libraries, the
    # pipeline modules, botocore's S3 model: about 0.4 s a process, which a fresh worker's
    # pool processes used to spend beside its first chunks). Nothing connects.
    _load_fast_path_libraries()
    app = getattr(sender, "app", None)
    if isinstance(app, EtlCelery):
        settings = app.settings
        load_pipeline_modules(settings.pipeline_modules, settings.pipeline_path)
        # boto3's default session keeps the model it loads for a client; a client
        # opens no connection, and each pool process builds its own.
        make_s3_client(settings.s3_endpoint_url, settings.s3_region)
    # Out of the collector's sight from now on: what was loaded above lives as long as
    # the process. A pool process would otherwise write to every page of it as its first
    # collections walk the objects, copying the pages the fork shared, all through a
    # fresh worker's first run.
    gc.freeze()


@worker_process_init.connect
def _start_pool_process(**_: Any) -> None:
    # A forked pool process must not reuse the parent's pooled connections...
    _services.clear()
    # ...and builds its own now, before it takes work (the libraries are loaded already,
    # unless the main process did not run worker_init).
    _load_fast_path_libraries()
    app = current_app._get_current_object()
    if isinstance(app, EtlCelery):
        services = _services_for(app)
        # Its first connections are opened beside, so its first chunk does not wait for
        # them; a thread, because Celery kills a pool process that is not up in 4 s, and
        # a database or broker away at start must not stop the worker (the first task then
        # connects, or fails and is retried, as it always could).
        threading.Thread(
            target=_open_first_connections, args=(services, app), name="etl-warm-up", daemon=True
        ).start()


def _open_first_connections(services: Services, app: EtlCelery) -> None:
    """The pool's first database connections (ledger and source) and the broker
    connection the process publishes on, each left open in its pool; a failure is logged."""
    engines = {"ledger": services.ledger.engine, "source": services.source_engine}
    if services.source_engine is services.ledger.engine:
        del engines["source"]
    for name, engine in engines.items():
        try:
            with engine.connect():
                pass
        except Exception as exc:
            logger.warning("could not open a first %s database connection: %s", name, exc)
    try:
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
    except Exception as exc:
        logger.warning("could not open a first broker connection: %s", exc)


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
        # Called in the task's except block: the chunk keeps the traceback's innermost
        # frames (trimmed), which the dashboard's run page shows.
        svc.ledger.fail_chunk(run_id, chunk_index, failure_text(why, sys.exc_info()[1]))
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
    """Plan a run and publish its chunk messages; the chunk that completes the run sends
    its commit."""
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
    if not pending:  # nothing to transform (no rows, or every chunk done): commit now
        svc.runs.commit_if_complete(run_id)
        return {"run_id": run_id, "dispatched": 0}
    # No chord: the ledger knows when the last chunk is done (see transform_chunk), so the
    # chunk messages are plain ones, published a batch at a time with one wait for the
    # broker's confirms per batch. ChunkDispatch reads the run between batches and stops
    # once it is no longer running (a cancel). A batch the broker does not confirm is
    # published again whole; if it never is, the error ends this task as a refused
    # publish always did, and the reconciler sends the plan of the run (chunks pending,
    # none moving) again, which re-publishes the chunks not done (duplicates are safe).
    # The publishing connection is kept for this thread's next plan.
    dispatch = steps.ChunkDispatch(svc, run_id, pending)
    publisher = kept_task_batches(self.app, TASK_TRANSFORM_CHUNK)
    for batch in dispatch.batches():
        publisher.publish([[run_id, chunk.index] for chunk in batch])
    return {"run_id": run_id, "dispatched": dispatch.sent}


@shared_task(name=TASK_TRANSFORM_CHUNK, bind=True, ignore_result=True)
def transform_chunk(self: Task, run_id: str, chunk_index: int) -> dict[str, Any] | None:
    """Transform one chunk into one part; returns only its key, rows, bytes and sha256.
    The delivery whose chunk completes the run sends the run's commit (steps)."""
    _check_arguments(self, run_id, chunk_index)
    svc = services(self)
    try:
        # The worker process, as the run page shows it: Celery's node name and our pid.
        worker = f"{self.request.hostname or 'worker'} (pid {os.getpid()})"
        # A message delivered again, or a retry: its first try may have died between
        # claiming the run's commit and sending it.
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        return steps.transform_chunk(
            svc,
            run_id,
            chunk_index,
            worker,
            redelivered=redelivered or self.request.retries > 0,
        )
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
