from __future__ import annotations

import pickle
from typing import Any

import pytest
from kombu import Queue
from kombu.exceptions import ContentDisallowed
from kombu.serialization import dumps, loads, prepare_accept_content

from etl.adapters.topology import dead_letter_queues, work_queues
from etl.config import Settings
from etl.worker.app import (
    TASK_COMMIT_RUN,
    TASK_PLAN_RUN,
    TASK_START_SCHEDULED_RUN,
    TASK_TRANSFORM_CHUNK,
    EtlCelery,
    make_celery,
)

UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"
WORK_QUEUE_NAMES = ["etl.plan", "etl.transform", "etl.commit"]


def build(broker_url: str = UNREACHABLE_BROKER) -> EtlCelery:
    settings = Settings(
        broker_url=broker_url,
        result_backend="redis://127.0.0.1:1/0",
        task_soft_time_limit_s=100,
        task_time_limit_s=130,
        result_expires_s=7200,
        worker_concurrency=3,
    )
    return make_celery(settings)


def arguments(queue: Any) -> dict[str, Any]:
    # kombu sets queue_arguments in __init__, out of its type stubs' sight.
    return dict(queue.queue_arguments or {})


@pytest.fixture
def app() -> EtlCelery:
    return build()


@pytest.mark.timeout(20)
def test_building_the_app_with_an_unreachable_broker_opens_no_connection(app: EtlCelery) -> None:
    # Reading the whole configuration and the routing must not need the broker either.
    assert app.conf.broker_url == UNREACHABLE_BROKER
    assert app.amqp.router.route({}, TASK_PLAN_RUN, (), {})["queue"].name == "etl.plan"


def test_only_json_is_sent_and_accepted(app: EtlCelery) -> None:
    assert app.conf.accept_content == ["json"]
    assert app.conf.result_accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"


def test_a_pickle_body_is_refused_under_the_apps_accept_list(app: EtlCelery) -> None:
    accept = prepare_accept_content(app.conf.accept_content)
    body = pickle.dumps({"task": "etl.plan_run", "args": ["x"]})
    with pytest.raises(ContentDisallowed):
        loads(body, "application/x-python-serialize", "binary", accept=accept)
    content_type, encoding, data = dumps({"args": ["run-1"]}, serializer="json")
    assert loads(data, content_type, encoding, accept=accept) == {"args": ["run-1"]}


def test_tasks_are_acknowledged_late_and_redelivered_when_a_worker_dies(app: EtlCelery) -> None:
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1


def test_limits_and_expiry_come_from_settings(app: EtlCelery) -> None:
    assert app.conf.task_soft_time_limit == 100
    assert app.conf.task_time_limit == 130
    assert app.conf.result_expires == 7200
    assert app.conf.worker_concurrency == 3
    assert app.settings.task_time_limit_s == 130


def test_amqp_publishes_with_confirms_and_retries_connecting_on_startup(app: EtlCelery) -> None:
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.broker_connection_retry_on_startup is True


def test_the_in_memory_broker_polls_fast() -> None:
    assert build("memory://localhost/").conf.broker_transport_options == {"polling_interval": 0.01}


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        (TASK_PLAN_RUN, "etl.plan"),
        (TASK_START_SCHEDULED_RUN, "etl.plan"),
        (TASK_TRANSFORM_CHUNK, "etl.transform"),
        (TASK_COMMIT_RUN, "etl.commit"),
    ],
)
def test_each_task_is_routed_to_its_queue(app: EtlCelery, task_name: str, queue: str) -> None:
    # The exchange is named so Celery does not fall back to the default exchange.
    assert app.conf.task_routes[task_name] == {
        "queue": queue,
        "exchange": "etl",
        "routing_key": queue,
    }
    routed = app.amqp.router.route({}, task_name, (), {})
    assert routed["queue"].name == queue
    assert routed["queue"].routing_key == queue
    assert routed["exchange"] == "etl" and routed["routing_key"] == queue


def test_task_names_are_the_documented_contract() -> None:
    assert (TASK_PLAN_RUN, TASK_TRANSFORM_CHUNK, TASK_COMMIT_RUN, TASK_START_SCHEDULED_RUN) == (
        "etl.plan_run",
        "etl.transform_chunk",
        "etl.commit_run",
        "etl.start_scheduled_run",
    )


def test_unknown_queues_are_not_created_on_the_fly(app: EtlCelery) -> None:
    assert app.conf.task_create_missing_queues is False
    assert app.conf.task_default_queue == "etl.plan"


def test_every_work_queue_dead_letters_to_the_dlx_under_its_own_name(app: EtlCelery) -> None:
    queues: list[Queue] = list(app.conf.task_queues)
    assert [queue.name for queue in queues] == WORK_QUEUE_NAMES
    for queue in queues:
        assert queue.durable
        assert arguments(queue)["x-dead-letter-exchange"] == "etl.dlx"
        assert arguments(queue)["x-dead-letter-routing-key"] == queue.name
        assert queue.exchange.name == "etl"
        assert queue.routing_key == queue.name


def test_celery_and_the_topology_declare_identical_work_queues(app: EtlCelery) -> None:
    # RabbitMQ refuses a redeclaration with other arguments, so they must never drift.
    ours = {q.name: (arguments(q), q.routing_key) for q in work_queues()}
    celerys = {q.name: (arguments(q), q.routing_key) for q in app.conf.task_queues}
    assert ours == celerys


def test_each_dead_letter_queue_is_bound_to_the_dlx_with_its_source_queues_name() -> None:
    dlqs = dead_letter_queues()
    assert [queue.name for queue in dlqs] == [f"{name}.dlq" for name in WORK_QUEUE_NAMES]
    for queue, source in zip(dlqs, WORK_QUEUE_NAMES, strict=True):
        assert queue.exchange.name == "etl.dlx"
        assert queue.exchange.type == "direct"
        assert queue.routing_key == source
        assert queue.durable
        assert "x-dead-letter-exchange" not in arguments(queue)
