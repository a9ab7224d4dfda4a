"""RabbitMQ topology: work queues, each with a dead-letter exchange and its own DLQ, and
an alternate exchange that keeps unroutable messages instead of dropping them.

The same Queue objects are given to Celery (``task_queues``) and declared here, so the
arguments are identical everywhere; RabbitMQ refuses a redeclaration with different
arguments (PRECONDITION_FAILED), which makes a mismatch fail loudly at start-up.
"""

from __future__ import annotations

import contextlib
from typing import Any

from amqp import spec
from kombu import Connection, Exchange, Queue

PLAN_QUEUE = "etl.plan"
TRANSFORM_QUEUE = "etl.transform"
COMMIT_QUEUE = "etl.commit"
WORK_QUEUES = (PLAN_QUEUE, TRANSFORM_QUEUE, COMMIT_QUEUE)
UNROUTABLE_QUEUE = "etl.unroutable"

# A message published to "etl" with a routing key no queue is bound to goes to the
# alternate exchange and waits in etl.unroutable, rather than vanishing.
UNROUTABLE_EXCHANGE = Exchange(UNROUTABLE_QUEUE, type="fanout", durable=True)
WORK_EXCHANGE = Exchange(
    "etl", type="direct", durable=True, arguments={"alternate-exchange": UNROUTABLE_QUEUE}
)
# Internal: no client may publish to it (a forged dead letter), while the broker still
# dead-letters into it. kombu cannot declare an internal exchange, so declare_topology
# declares it itself and the queues bound to it leave it alone.
DEAD_LETTER_EXCHANGE = Exchange("etl.dlx", type="direct", durable=True, no_declare=True)


def dead_letter_queue_name(queue: str) -> str:
    """``etl.transform`` -> ``etl.transform.dlq``."""
    return f"{queue}.dlq"


def _type_arguments(queue_type: str, delivery_limit: int) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = delivery_limit
    return arguments


def work_queues(queue_type: str = "classic", delivery_limit: int = 10) -> list[Queue]:
    """The queues workers consume, each dead-lettering into its own DLQ."""
    return [
        Queue(
            name,
            WORK_EXCHANGE,
            routing_key=name,
            durable=True,
            queue_arguments={
                **_type_arguments(queue_type, delivery_limit),
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": name,
            },
        )
        for name in WORK_QUEUES
    ]


def dead_letter_queues(queue_type: str = "classic") -> list[Queue]:
    """Where rejected messages are parked, visible and replayable."""
    return [
        Queue(
            dead_letter_queue_name(name),
            DEAD_LETTER_EXCHANGE,
            routing_key=name,
            durable=True,
            queue_arguments={"x-queue-type": queue_type},
        )
        for name in WORK_QUEUES
    ]


def unroutable_queue(queue_type: str = "classic") -> Queue:
    """Where messages nobody could route wait to be looked at."""
    return Queue(
        UNROUTABLE_QUEUE,
        UNROUTABLE_EXCHANGE,
        durable=True,
        queue_arguments={"x-queue-type": queue_type},
    )


def all_queues(queue_type: str = "classic", delivery_limit: int = 10) -> list[Queue]:
    """Every queue of the topology, in declaration order."""
    return [
        unroutable_queue(queue_type),
        *dead_letter_queues(queue_type),
        *work_queues(queue_type, delivery_limit),
    ]


# Celery's broker_use_ssl (Settings.broker_use_ssl): TLS options, or False for none.
BrokerTls = dict[str, Any] | bool


def broker_connection(
    url: str, ssl: BrokerTls = False, timeout: float = 10, *, confirm_publish: bool = False
) -> Connection:
    """A kombu connection for what Celery does not do itself (topology, queue figures,
    dead letters, probes), with the same TLS options as Celery's own."""
    options = {"confirm_publish": True} if confirm_publish else {}
    return Connection(url, connect_timeout=timeout, ssl=ssl, transport_options=options)


def declare_topology(
    broker_url: str,
    queue_type: str = "classic",
    delivery_limit: int = 10,
    *,
    ssl: BrokerTls = False,
) -> None:
    """Declare exchanges and queues; raises if any exists with other arguments."""
    with broker_connection(broker_url, ssl) as connection:
        # One attempt, failing at once: the callers retry on their own terms (kombu's
        # channel() would try twice, two seconds apart).
        connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        channel = connection.channel()
        try:
            _declare_internal(channel, DEAD_LETTER_EXCHANGE)
            for queue in all_queues(queue_type, delivery_limit):
                queue.bind(channel).declare()
        finally:
            channel.close()


def _declare_internal(channel: Any, exchange: Exchange) -> None:
    # exchange.declare with its "internal" bit set, which py-amqp always sends unset.
    channel.send_method(
        spec.Exchange.Declare,
        "BssbbbbbF",
        (0, exchange.name, exchange.type, False, exchange.durable, False, True, False, {}),
        wait=spec.Exchange.DeclareOk,
    )


def queue_stats(
    broker_url: str, names: list[str], *, ssl: BrokerTls = False
) -> dict[str, tuple[int, int]]:
    """(messages ready, consumers) per queue, by passive declare (creates nothing); a
    queue that does not exist is left out."""
    stats = {}
    with broker_connection(broker_url, ssl, timeout=5) as connection:
        for name in names:
            # The broker closes the channel when the queue is missing: one per queue.
            channel = connection.channel()
            with contextlib.suppress(*connection.channel_errors):
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                stats[name] = (messages, consumers)
            with contextlib.suppress(*connection.channel_errors):
                channel.close()
    return stats
