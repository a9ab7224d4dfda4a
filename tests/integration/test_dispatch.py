"""Chunk messages published a batch at a time (etl.worker.app.task_batches) on the real
broker: each is the message send_task makes, and every message of every batch is in the
queue once the batches return (the broker confirmed them). No worker consumes here."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

import etl.worker.tasks  # noqa: F401  (defines the tasks, as a worker's start does)
from etl.adapters.topology import TRANSFORM_QUEUE
from etl.config import Settings
from etl.worker.app import (
    TASK_TRANSFORM_CHUNK,
    EtlCelery,
    close_kept_publishers,
    kept_task_batches,
    task_batches,
)

from support import rabbitmqctl

pytestmark = pytest.mark.integration


@pytest.fixture
def transform_queue(celery_app: EtlCelery, service_settings: Settings) -> Iterator[Any]:
    """A channel on the session's vhost, with etl.transform empty before and after."""
    with Connection(service_settings.broker_url) as connection:
        channel = connection.channel()
        channel.queue_purge(TRANSFORM_QUEUE)
        yield channel
        channel.queue_purge(TRANSFORM_QUEUE)


def take_all(channel: Any) -> list[Any]:
    messages = []
    while (message := channel.basic_get(TRANSFORM_QUEUE, no_ack=True)) is not None:
        messages.append(message)
    return messages


def test_a_batched_chunk_message_is_the_one_send_task_makes(
    celery_app: EtlCelery, transform_queue: Any
) -> None:
    run_id = str(uuid.uuid4())
    # As in a worker, the app knows its tasks (send_task then takes each one's options,
    # such as its time limits, into its message).
    assert TASK_TRANSFORM_CHUNK in celery_app.tasks
    celery_app.send_task(TASK_TRANSFORM_CHUNK, args=[run_id, 7], ignore_result=True)
    with task_batches(celery_app, TASK_TRANSFORM_CHUNK) as batches:
        batches.publish([[run_id, 7]])

    sent, batched = take_all(transform_queue)

    own = {"id", "root_id"}  # each message's task id
    assert {k: v for k, v in batched.headers.items() if k not in own} == {
        k: v for k, v in sent.headers.items() if k not in own
    }
    assert batched.headers["run_id"] == run_id  # tagged by the publish signal, as any
    assert batched.headers["ignore_result"] is True
    assert batched.body == sent.body
    properties = ("content_type", "content_encoding", "delivery_mode", "priority", "reply_to")
    assert {p: batched.properties.get(p) for p in properties} == {
        p: sent.properties.get(p) for p in properties
    }
    assert batched.properties["correlation_id"] == batched.headers["id"]
    assert (batched.delivery_info["exchange"], batched.delivery_info["routing_key"]) == (
        "etl",
        TRANSFORM_QUEUE,
    )


def test_every_message_of_every_batch_is_queued_once_the_batches_return(
    celery_app: EtlCelery, transform_queue: Any
) -> None:
    run_id = str(uuid.uuid4())
    with task_batches(celery_app, TASK_TRANSFORM_CHUNK) as batches:
        for start in range(0, 2000, 500):
            batches.publish([[run_id, index] for index in range(start, start + 500)])

    queued = take_all(transform_queue)

    assert sorted(message.headers["argsrepr"] for message in queued) == sorted(
        repr([run_id, index]) for index in range(2000)
    )
    assert len({message.headers["id"] for message in queued}) == 2000


def test_a_worker_thread_keeps_its_publishing_connection_between_plans_until_it_is_closed(
    celery_app: EtlCelery, rabbitmq_vhost: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own connection to read the queue with: the broker closes every one of the vhost.
    with Connection(celery_app.settings.broker_url) as connection:
        connection.channel().queue_purge(TRANSFORM_QUEUE)
    run_id = str(uuid.uuid4())
    close_kept_publishers(celery_app)
    opened: list[Any] = []
    connection_for_write = celery_app.connection_for_write

    def counted(*args: Any, **kwargs: Any) -> Any:
        connection = connection_for_write(*args, **kwargs)  # the real one
        # The publisher's own (not Celery's lazy event dispatcher's): it asks for
        # channels that do not wait for each confirm.
        if kwargs.get("transport_options") == {"confirm_publish": False}:
            opened.append(connection)
        return connection

    monkeypatch.setattr(celery_app, "connection_for_write", counted)
    publisher = kept_task_batches(celery_app, TASK_TRANSFORM_CHUNK)
    try:
        publisher.publish([[run_id, 0]])  # one plan's chunks...
        assert kept_task_batches(celery_app, TASK_TRANSFORM_CHUNK) is publisher
        publisher.publish([[run_id, 1]])  # ...and the next plan's, on the same connection
        assert len(opened) == 1
        others: list[Any] = []
        thread = threading.Thread(
            target=lambda: others.append(kept_task_batches(celery_app, TASK_TRANSFORM_CHUNK))
        )
        thread.start()
        thread.join()
        assert others[0] is not publisher  # a connection is not shared between threads

        # The broker closes it (a restart, an operator): the next plan's batch goes on a
        # new connection, and arrives.
        rabbitmqctl("close_all_connections", "-p", rabbitmq_vhost, "test: kept publisher")
        publisher.publish([[run_id, 2]])
        assert len(opened) == 2
    finally:
        close_kept_publishers(celery_app)

    with Connection(celery_app.settings.broker_url) as connection:
        queued = take_all(connection.channel())
    assert sorted(message.headers["argsrepr"] for message in queued) == [
        repr([run_id, index]) for index in range(3)
    ]
