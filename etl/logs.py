"""Logs: one JSON event per line (``ETL_LOG_FORMAT=json``) or human-readable text, and
every line logged while a task runs carries its ``run_id``, ``chunk`` and ``task_id``.

The run id also travels in each task message's headers (``run_id``), so the worker that
picks a message up, and anyone reading the broker, can tell which run it belongs to.
``grep <run_id>`` over the logs of every process follows one run.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import signals
from celery.utils.log import get_multiprocessing_logger

from etl.domain.task_messages import (
    TASK_COMMIT_RUN,
    TASK_PLAN_RUN,
    TASK_TRANSFORM_CHUNK,
    InvalidTaskMessage,
    check_run_id,
)

# What the current task is working on; empty outside tasks.
task_context: ContextVar[dict[str, Any] | None] = ContextVar("etl_task_context", default=None)

# Task names whose first argument is a run id, and the one whose second is a chunk.
_RUN_TASKS = (TASK_PLAN_RUN, TASK_TRANSFORM_CHUNK, TASK_COMMIT_RUN)
_CHUNK_TASK = TASK_TRANSFORM_CHUNK
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Adds the current task's run id, chunk and task id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (task_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, and the task
    context and any ``extra`` fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
        }
        event |= {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_")
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    """The human-readable form, with the run id and chunk when there are some."""

    def format(self, record: logging.LogRecord) -> str:
        """``time LEVEL logger [run … chunk …] message``."""
        line = super().format(record)
        run = getattr(record, "run_id", None)
        if run is None:
            return line
        chunk = getattr(record, "chunk", None)
        where = f"[run {run}" + (f" chunk {chunk}" if chunk is not None else "") + "] "
        return line.replace(" | ", f" | {where}", 1)


def formatter_for(log_format: str, service: str) -> logging.Formatter:
    """The formatter for ``ETL_LOG_FORMAT``."""
    if log_format == "json":
        return JsonFormatter(service)
    return TextFormatter("%(asctime)s %(levelname)s %(name)s | %(message)s")


def configure_logging(log_format: str, level: str, service: str) -> None:
    """Log to stderr in the chosen format, with the task context on every record."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter_for(log_format, service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def install_celery_hooks(log_format: str, service: str) -> None:
    """Make a Celery process (worker or Beat) log in the chosen format, tag its task
    messages with their run id, and put each running task's context on its records."""

    def _restyle(logger: logging.Logger, **_: Any) -> None:
        # Celery gives billiard's pool logger (a pool child that died, say) handlers of
        # its own, in Celery's format: restyle those too, or JSON logs get text lines.
        for one in (logger, get_multiprocessing_logger()):
            for handler in getattr(one, "handlers", []):
                handler.setFormatter(formatter_for(log_format, service))
                handler.addFilter(ContextFilter())

    signals.after_setup_logger.connect(_restyle, weak=False)
    signals.after_setup_task_logger.connect(_restyle, weak=False)
    signals.task_prerun.connect(_enter_task, weak=False, dispatch_uid="etl-task-context")
    signals.task_postrun.connect(_leave_task, weak=False, dispatch_uid="etl-task-context")


def tag_messages_with_run_id() -> None:
    """Every task message of a run carries its run id in a ``run_id`` header."""
    signals.before_task_publish.connect(
        _tag_with_run_id, weak=False, dispatch_uid="etl-run-id-header"
    )


def _tag_with_run_id(
    sender: str | None = None, body: Any = None, headers: Any = None, **_: Any
) -> None:
    if sender in _RUN_TASKS and isinstance(headers, dict) and body:
        args = body[0] if isinstance(body, list | tuple) else None
        if args and isinstance(args[0], str):
            headers.setdefault("run_id", args[0])


def _enter_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    # Every line the task logs carries this context, and a signed message's arguments
    # are checked only inside the task: take only values that are what they claim (a
    # 20 MB "run id" once prefixed every line of a worker's log).
    context: dict[str, Any] = {"task_id": _short(task_id), "task": getattr(task, "name", None)}
    run_id = getattr(getattr(task, "request", None), "run_id", None)
    if run_id is None and task is not None and task.name in _RUN_TASKS and args:
        run_id = args[0]
    if run_id is not None:
        context["run_id"] = run_id if _is_run_id(run_id) else "(invalid)"
    if task is not None and task.name == _CHUNK_TASK and args and len(args) > 1:
        context["chunk"] = args[1] if type(args[1]) is int else "(invalid)"
    task_context.set(context)


def _is_run_id(value: Any) -> bool:
    try:
        check_run_id(value)
    except InvalidTaskMessage:
        return False
    return True


def _short(value: Any) -> Any:
    return value[:100] if isinstance(value, str) else value


def _leave_task(**_: Any) -> None:
    task_context.set(None)
