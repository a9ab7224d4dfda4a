"""Queue topology on the real RabbitMQ: DLX arguments, dead-lettering, loud mismatches."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import PreconditionFailed
from kombu import Connection, Producer, Queue

from etl.adapters.topology import (
    DEAD_LETTER_EXCHANGE,
    TRANSFORM_QUEUE,
    UNROUTABLE_QUEUE,
    WORK_EXCHANGE,
    WORK_QUEUES,
    declare_topology,
)
from etl.config import Settings
from etl.worker.app import TASK_TRANSFORM_CHUNK, make_celery

from support import RABBITMQ_URL, rabbitmqctl, scratch_vhost, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_vhost(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost with no workers on it, so nothing consumes what a test publishes."""
    with scratch_vhost(f"{rabbitmq_vhost}-topo-{uuid.uuid4().hex[:6]}") as vhost:
        yield vhost


def queues_of(vhost: str, *columns: str) -> dict[str, dict[str, Any]]:
    """The vhost's queues by name, as rabbitmqctl lists them with ``columns``; each
    one's arguments as a dict."""
    listed = json.loads(
        rabbitmqctl(
            "list_queues", "-p", vhost, "name", "arguments", *columns, "--formatter", "json"
        )
    )
    return {
        queue["name"]: {**queue, "arguments": {k: v for k, _type, v in queue["arguments"]}}
        for queue in listed
    }


def test_every_work_queue_dead_letters_into_its_own_queue(empty_vhost: str) -> None:
    declare_topology(f"{RABBITMQ_URL}/{empty_vhost}")

    queues = queues_of(empty_vhost, "durable")
    for name in WORK_QUEUES:
        arguments = queues[name]["arguments"]
        assert arguments["x-dead-letter-exchange"] == "etl.dlx"
        assert arguments["x-dead-letter-routing-key"] == name
        assert queues[name]["durable"] is True
        assert f"{name}.dlq" in queues
    bindings = json.loads(
        rabbitmqctl(
            "list_bindings",
            "-p",
            empty_vhost,
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        )
    )
    dlx = {
        (b["routing_key"], b["destination_name"]) for b in bindings if b["source_name"] == "etl.dlx"
    }
    assert dlx == {(name, f"{name}.dlq") for name in WORK_QUEUES}


def test_a_rejected_message_is_parked_in_the_dead_letter_queue(empty_vhost: str) -> None:
    url = f"{RABBITMQ_URL}/{empty_vhost}"
    declare_topology(url)
    with Connection(url) as connection:
        channel = connection.channel()
        Producer(channel).publish(
            {"poison": True}, exchange=WORK_EXCHANGE, routing_key=TRANSFORM_QUEUE, serializer="json"
        )
        work = Queue(TRANSFORM_QUEUE, WORK_EXCHANGE, routing_key=TRANSFORM_QUEUE, no_declare=True)(
            channel
        )
        message = work.get(no_ack=False)
        assert message is not None
        message.reject(requeue=False)

        dead = Queue(f"{TRANSFORM_QUEUE}.dlq", DEAD_LETTER_EXCHANGE, no_declare=True)(channel)
        # Dead-lettering happens inside the broker after the reject returns.
        parked = wait_until(
            lambda: dead.get(no_ack=True), timeout_s=10, what="the message in etl.transform.dlq"
        )
        assert json.loads(parked.body) == {"poison": True}
        death = parked.headers["x-death"][0]
        assert death["queue"] == TRANSFORM_QUEUE and death["reason"] == "rejected"


def test_declaring_a_queue_with_other_arguments_fails_loudly(empty_vhost: str) -> None:
    url = f"{RABBITMQ_URL}/{empty_vhost}"
    declare_topology(url)
    clashing = Queue(TRANSFORM_QUEUE, WORK_EXCHANGE, routing_key=TRANSFORM_QUEUE, durable=True)
    with (
        Connection(url) as connection,
        pytest.raises(PreconditionFailed, match="x-dead-letter-exchange"),
    ):
        clashing(connection.channel()).declare()


def test_an_unroutable_message_is_kept_in_etl_unroutable(empty_vhost: str) -> None:
    url = f"{RABBITMQ_URL}/{empty_vhost}"
    declare_topology(url)
    with Connection(url) as connection:
        channel = connection.channel()
        Producer(channel).publish(
            {"lost": True}, exchange=WORK_EXCHANGE, routing_key="etl.nowhere", serializer="json"
        )
        kept = Queue(UNROUTABLE_QUEUE, no_declare=True)(channel)
        message = wait_until(lambda: kept.get(no_ack=True), timeout_s=10, what="etl.unroutable")
        assert json.loads(message.body) == {"lost": True}


def test_quorum_queues_carry_a_delivery_limit(empty_vhost: str) -> None:
    declare_topology(f"{RABBITMQ_URL}/{empty_vhost}", queue_type="quorum", delivery_limit=7)
    queues = queues_of(empty_vhost, "type")
    for name in WORK_QUEUES:
        arguments = queues[name]["arguments"]
        assert queues[name]["type"] == "quorum"
        assert arguments["x-delivery-limit"] == 7
        assert arguments["x-dead-letter-exchange"] == "etl.dlx"


def test_a_task_celery_sends_goes_through_the_etl_exchange(empty_vhost: str) -> None:
    url = f"{RABBITMQ_URL}/{empty_vhost}"
    declare_topology(url)
    app = make_celery(Settings(broker_url=url))
    app.send_task(TASK_TRANSFORM_CHUNK, args=["run", 0])
    with Connection(url) as connection:
        work = Queue(TRANSFORM_QUEUE, no_declare=True)(connection.channel())
        message = wait_until(lambda: work.get(no_ack=True), timeout_s=10, what="the task")
    # Not the default exchange (""): the etl exchange, whose alternate exchange keeps
    # whatever it cannot route.
    assert message.delivery_info["exchange"] == "etl"
    assert message.delivery_info["routing_key"] == TRANSFORM_QUEUE
    assert message.headers["task"] == TASK_TRANSFORM_CHUNK
