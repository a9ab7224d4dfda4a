"""``make_celery(settings)``: the one place Celery is configured."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.utils import uuid
from celery.worker.consumer import Consumer

from etl.adapters.broker_client import accepted_content_types, never_inflate_bodies
from etl.adapters.publishing import ConfirmedBatches
from etl.adapters.topology import (
    COMMIT_QUEUE,
    PLAN_QUEUE,
    TRANSFORM_QUEUE,
    WORK_EXCHANGE,
    work_queues,
)
from etl.config import MAX_ETA_AHEAD_S, Settings
from etl.domain.clock import utc_now
from etl.domain.task_messages import (
    TASK_COMMIT_RUN,
    TASK_PLAN_RUN,
    TASK_RECONCILE,
    TASK_START_SCHEDULED_RUN,
    TASK_TRANSFORM_CHUNK,
    InvalidTaskMessage,
    check_headers,
    check_json_message,
)
from etl.logs import tag_messages_with_run_id

__all__ = [
    "TASK_COMMIT_RUN",
    "TASK_PLAN_RUN",
    "TASK_RECONCILE",
    "TASK_ROUTES",
    "TASK_START_SCHEDULED_RUN",
    "TASK_TRANSFORM_CHUNK",
    "EtlCelery",
    "celery_enqueue",
    "kept_task_batches",
    "make_celery",
    "task_batches",
]

logger = logging.getLogger(__name__)


def _route(queue: str) -> dict[str, str]:
    # With a queue name alone, Celery publishes a direct-exchange task through the
    # default exchange, bypassing the etl exchange and its alternate exchange. Naming
    # the exchange and routing key sends every task through etl, so a task whose queue
    # is unbound is kept in etl.unroutable instead of vanishing.
    return {"queue": queue, "exchange": WORK_EXCHANGE.name, "routing_key": queue}


TASK_ROUTES = {
    TASK_PLAN_RUN: _route(PLAN_QUEUE),
    TASK_START_SCHEDULED_RUN: _route(PLAN_QUEUE),
    TASK_RECONCILE: _route(PLAN_QUEUE),
    TASK_TRANSFORM_CHUNK: _route(TRANSFORM_QUEUE),
    TASK_COMMIT_RUN: _route(COMMIT_QUEUE),
}

EMBEDDED_BROKER_URL = "memory://localhost/"
EMBEDDED_RESULT_BACKEND = "cache+memory://"
# How long a worker thread keeps its publishing connection between two plans: well under
# RabbitMQ's heartbeat timeout (60 s), as nothing is sent on it meanwhile.
KEEP_PUBLISHING_CONNECTION_S = 20.0


class EtlCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the Settings it was built from."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("nightly_etl", **kwargs)
        self.settings = settings
        # Each worker thread's kept publishers by task name (kept_task_batches).
        self.thread_publishers = threading.local()


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, but it checks every message before Celery reads any of it, and
    what it refuses is dead-lettered, never acked and never requeued.

    Celery trusts a message's headers: a ``task`` header that is a list made its task
    lookup raise ``TypeError`` and stopped the worker, and the requeued message then
    stopped the next one. Here the headers (and, for JSON, the body and its arguments)
    are checked against ``etl.domain.task_messages`` first; a message that fails is
    rejected without requeue, so RabbitMQ parks it in the queue's DLQ, where the
    dead-letter sync runs the same check and records the reason.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        never_inflate_bodies()
        super().__init__(*args, **kwargs)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        celery_handler = super().create_task_handler(*args, **kwargs)
        accepted_types = accepted_content_types(self.app.conf.accept_content)
        json_bodies = accepted_types == {"application/json"}

        def on_task_received(message: Any) -> Any:
            try:
                _check_message(message, accepted_types, json_bodies)
            except InvalidTaskMessage as exc:
                return self._refuse(message, str(exc))
            try:
                return celery_handler(message)
            except self.connection_errors:
                raise
            except (TypeError, ValueError, LookupError, AttributeError) as exc:
                # A shape the check above does not know yet: refuse it rather than let
                # it stop the worker (and then every worker it is redelivered to).
                return self._refuse(message, f"Celery could not read it: {exc!r}")

        return on_task_received

    def _refuse(self, message: Any, reason: str) -> None:
        logger.error(
            "refused a task message and dead-lettered it: %s (queue %r, content type %r)",
            reason[:500],
            (message.delivery_info or {}).get("routing_key"),
            str(message.content_type)[:100],
        )
        message.reject(requeue=False)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # Celery acknowledges a message it cannot decode (so it cannot loop); rejecting it
        # without requeue does the same for the queue and parks it where it can be seen.
        self._refuse(message, f"it cannot be decoded: {exc!r}")


def _check_message(message: Any, accepted_types: set[str], json_bodies: bool) -> None:
    if message.content_type not in accepted_types:
        raise InvalidTaskMessage(
            f"content type {str(message.content_type)[:100]!r} is refused "
            f"(accepted: {', '.join(sorted(accepted_types))})"
        )
    now = utc_now()
    if not json_bodies:
        # A signed body is checked in the task, after its signature is verified.
        check_headers(message.headers, message.properties, now=now, max_eta_s=MAX_ETA_AHEAD_S)
        return
    body = message.body
    if isinstance(body, str):  # kombu hands some transports' bodies back as text
        body = body.encode(message.content_encoding or "utf-8")
    check_json_message(
        message.headers, bytes(body), message.properties, now=now, max_eta_s=MAX_ETA_AHEAD_S
    )


class _Sent:
    """What ``send_task`` hands back for a task nobody awaits: its id. (Celery's
    AsyncResult would load the result backend's client, 0.1 s at a process's first send,
    and subscribe to the task's result.)"""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.ignored = True


def celery_enqueue(app: EtlCelery) -> Callable[[str, list[Any]], None]:
    """The service layer's Enqueue port on a Celery app: publish a task by name with
    positional JSON arguments, routed by the app; raises if the broker refused it. No
    result is kept: the ledger, not the result backend, says what a task did."""

    def enqueue(name: str, args: list[Any]) -> None:
        app.send_task(name, args=args, ignore_result=True, result_cls=_Sent, add_to_parent=False)

    return enqueue


def task_batches(
    app: EtlCelery, name: str, *, keep_open_s: float | None = None
) -> ConfirmedBatches[list[Any]]:
    """Publishes ``name`` tasks, one message per list of positional arguments, a batch at
    a time, on a connection of their own with one wait for the broker's confirms per
    batch. Each message is the one ``send_task`` makes (routed, serialized or signed by
    the app, tagged by the publish signals), but not stored as a result: nothing reads
    them (the ledger is the truth)."""
    policy = {"max_retries": 5, **(app.conf.task_publish_retry_policy or {})}

    def connect() -> Any:
        # This connection's channels must not wait for each confirm themselves.
        return app.connection_for_write(transport_options={"confirm_publish": False})

    return ConfirmedBatches(
        connect,
        _message_sender(app, name),
        max_retries=int(policy["max_retries"]),
        interval_start=float(policy.get("interval_start", 0.2)),
        interval_step=float(policy.get("interval_step", 0.5)),
        interval_max=float(policy.get("interval_max", 3.0)),
        keep_open_s=keep_open_s,
    )


def kept_task_batches(app: EtlCelery, name: str) -> ConfirmedBatches[list[Any]]:
    """``task_batches(app, name)``, kept by the calling thread and used again by its next
    call within KEEP_PUBLISHING_CONNECTION_S: the connection is opened once for the
    runs a worker process plans back to back. A thread's own, as a connection is not
    thread-safe (the embedded worker runs tasks on threads)."""
    kept: dict[str, ConfirmedBatches[list[Any]]] = app.thread_publishers.__dict__
    if name not in kept:
        kept[name] = task_batches(app, name, keep_open_s=KEEP_PUBLISHING_CONNECTION_S)
    return kept[name]


def close_kept_publishers(app: EtlCelery) -> None:
    """Close the calling thread's kept publishers (a worker process that exits)."""
    kept: dict[str, ConfirmedBatches[list[Any]]] = app.thread_publishers.__dict__
    for publisher in kept.values():
        publisher.close()
    kept.clear()


def _message_sender(app: EtlCelery, name: str) -> Callable[[Any, list[Any]], None]:
    """``app.send_task(name, args, producer=...)`` for many messages of one task: what is
    the same for all of them (the task's options, its route) is worked out once: 130 us
    a message against send_task's 210-380 us here. The message is send_task's own
    (tests/integration/test_dispatch.py compares them)."""
    amqp = app.amqp
    task = app.tasks.get(name)
    exec_options = task._get_exec_options() if task is not None else {}
    options = {key: value for key, value in exec_options.items() if value is not None}
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    options.pop("expires", None)
    options = amqp.router.route(options, name, (), {}, task)
    sent_event = app.conf.task_send_sent_event

    def send(producer: Any, args: list[Any]) -> None:
        parent = app.current_worker_task
        message = amqp.create_task_message(
            uuid(),
            name,
            args,
            {},
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            create_sent_event=sent_event,
            reply_to=app.thread_oid,
            root_id=(parent.request.root_id or parent.request.id) if parent else None,
            parent_id=parent.request.id if parent else None,
            ignore_result=True,
            # Our arguments are short strings and ints: their repr is what saferepr gives.
            argsrepr=repr(args),
            kwargsrepr="{}",
            **options,
        )
        # A failed batch is published again whole, on a new connection: no retry here.
        amqp.send_task_message(producer, name, message, retry=False, **options)

    return send


def make_celery(settings: Settings) -> EtlCelery:
    """Build the Celery app. Opens no connection: Celery connects on first use."""
    app = EtlCelery(
        settings,
        broker=settings.broker_url,
        backend=settings.result_backend,
        include=["etl.worker.tasks"],
    )
    app.conf.update(
        # JSON only: a pickle body could run code in the worker, so it is refused.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acknowledged after it finishes, and a worker that dies mid-task gets
        # its message redelivered; with prefetch 1 a worker holds one unstarted message.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that fails is rejected without requeue, so RabbitMQ dead-letters it:
        # never acknowledged silently. A task killed by the hard time limit is requeued;
        # the ledger's attempt count (steps.MAX_CHUNK_ATTEMPTS) stops it looping.
        task_acks_on_failure=False,
        task_acks_on_timeout=False,
        worker_consumer="etl.worker.app:DeadLetteringConsumer",
        worker_prefetch_multiplier=1,
        # A worker that lost its broker connection stops its late-ack tasks: the broker
        # has already handed their messages to someone else.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        result_expires=settings.result_expires_s,
        broker_connection_retry_on_startup=True,
        broker_use_ssl=settings.broker_use_ssl,
        broker_transport_options=_transport_options(settings.broker_url),
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 3,
        },
        task_queues=work_queues(settings.queue_type, settings.delivery_limit),
        task_default_queue=PLAN_QUEUE,
        task_default_exchange=WORK_EXCHANGE.name,
        task_default_routing_key=PLAN_QUEUE,
        task_create_missing_queues=False,
        task_routes=TASK_ROUTES,
        enable_utc=True,
        timezone="UTC",
        worker_concurrency=settings.worker_concurrency,
    )
    if settings.message_signing:
        _sign_messages(app, settings)
    tag_messages_with_run_id()
    return app


def _sign_messages(app: EtlCelery, settings: Settings) -> None:
    # Tasks go out signed ("auth" wraps the JSON body with a signature and the signer's
    # certificate id) and only signed tasks are accepted; results stay plain JSON in the
    # result backend. Celery registers the serializer process-wide, which is right for
    # a process that runs one app.
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        security_key=settings.security_key_file,
        security_certificate=settings.security_certificate_file,
        security_cert_store=settings.security_cert_store,
        security_digest="sha256",
    )
    app.setup_security(allowed_serializers=["json"], serializer="json")


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith("memory://"):
        # The in-memory transport polls once a second by default: a 100-task chord took
        # 14 s that way and 0.7 s polling every 10 ms.
        return {"polling_interval": 0.01}
    # Publisher confirms: a publish returns only once the broker has the message.
    return {"confirm_publish": True}


def announce_pipelines_at_start() -> None:
    """Log the pipelines this worker can run once Celery has set logging up (a JSON line
    in JSON mode): a pipeline missing there is a module missing from
    ETL_PIPELINE_MODULES."""
    from celery.signals import celeryd_after_setup

    from etl.pipelines import PIPELINES

    def announce(**_: object) -> None:
        logging.getLogger("etl.worker").warning(
            "etl worker: pipelines %s", ", ".join(sorted(PIPELINES)) or "(none)"
        )

    celeryd_after_setup.connect(announce, weak=False)
