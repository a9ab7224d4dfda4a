"""Every way a run ends, on the real PostgreSQL ledger (and RabbitMQ for a dead letter):
the state recorded, ``etl_runs_finished_total`` counted once, the run waiting for the
place admitted. The same endings on the in-memory fakes: tests/unit/test_run_endings.py.

Tasks are sent through a recording Enqueue port: no worker runs here.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from kombu import Connection, Queue
from prometheus_client import REGISTRY

from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import TRANSFORM_QUEUE, declare_topology
from etl.bootstrap import Services
from etl.domain.errors import EnqueueFailed, PlanTooLarge
from etl.domain.runs import ChunkState, RunState
from etl.pipelines import PIPELINES, get_pipeline
from etl.service import execution as steps
from etl.service.dead_letters import DeadLetterService
from etl.service.reconcile import reconcile
from etl.worker.app import TASK_TRANSFORM_CHUNK, celery_enqueue, make_celery
from etl.worker.tasks import give_up

from builders import DAY, new_run
from fakes import RecordingEnqueue
from support import RABBITMQ_URL, scratch_vhost, wait_until

PLAN = "etl.plan_run"


@pytest.fixture
def one_place(monkeypatch: pytest.MonkeyPatch) -> str:
    """A pipeline of its own (orders_daily, one place, chunks of 500 keys)."""
    name = f"one_place_{uuid.uuid4().hex[:8]}"
    pipeline = dataclasses.replace(
        get_pipeline("orders_daily"), name=name, max_active_runs=1, chunk_size=500
    )
    monkeypatch.setitem(PIPELINES, name, pipeline)
    return name


@pytest.fixture
def recorded(services: Services) -> Services:
    """The session's services on 1,000 seeded orders, sending through a RecordingEnqueue."""
    seed_orders(services.source_engine, 1_000)
    return dataclasses.replace(services, enqueue=RecordingEnqueue())


def calls(services: Services) -> list[tuple[str, list[object]]]:
    """What the services' recording Enqueue port was asked to send."""
    assert isinstance(services.enqueue, RecordingEnqueue)
    return services.enqueue.calls


def finished(pipeline: str, state: RunState) -> float:
    """etl_runs_finished_total of the pipeline in that state, as this process counted it."""
    labels = {"pipeline": pipeline, "state": state.value}
    return REGISTRY.get_sample_value("etl_runs_finished_total", labels) or 0.0


def holder_and_waiting(services: Services, pipeline: str) -> tuple[str, str]:
    """A running run holding the pipeline's place, a queued one waiting for it."""
    holder = new_run(services.ledger, pipeline=pipeline, day=DAY)
    waiting = new_run(services.ledger, pipeline=pipeline, day=DAY + timedelta(days=1))
    assert steps.plan_run(services, holder)
    assert steps.plan_run(services, waiting) is None
    calls(services).clear()
    return holder, waiting


def assert_ended_once(
    services: Services, pipeline: str, run_id: str, state: RunState, before: float, waiting: str
) -> None:
    """The run is in ``state``, counted once, and the waiting run's plan was sent."""
    assert services.ledger.get_run(run_id).state is state
    assert finished(pipeline, state) - before == 1
    assert (PLAN, [waiting]) in calls(services)


def test_a_commit_refused_ends_the_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str
) -> None:
    holder, waiting = holder_and_waiting(recorded, one_place)
    steps.transform_chunk(recorded, holder, 0)
    before = finished(one_place, RunState.FAILED)

    steps.commit_run(recorded, holder)
    steps.commit_run(recorded, holder)

    assert_ended_once(recorded, one_place, holder, RunState.FAILED, before, waiting)


def test_the_deadline_ends_the_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str
) -> None:
    holder, waiting = holder_and_waiting(recorded, one_place)
    started = recorded.ledger.get_run(holder).started_at
    assert started is not None
    before = finished(one_place, RunState.FAILED)

    for late in (61, 62):
        reconcile(
            recorded.runs,
            now=started + timedelta(seconds=late),
            stale_after_s=10**6,
            deadline_s=60,
        )

    assert_ended_once(recorded, one_place, holder, RunState.FAILED, before, waiting)


def test_a_cancel_ends_the_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str
) -> None:
    holder, waiting = holder_and_waiting(recorded, one_place)
    before = finished(one_place, RunState.CANCELLED)

    recorded.runs.cancel_run(holder)
    recorded.runs.cancel_run(holder)

    assert_ended_once(recorded, one_place, holder, RunState.CANCELLED, before, waiting)


def test_a_task_giving_up_on_a_chunk_ends_the_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str
) -> None:
    holder, waiting = holder_and_waiting(recorded, one_place)
    before = finished(one_place, RunState.FAILED)

    give_up(recorded, holder, "chunk 1 failed: ValueError: boom", 1)
    give_up(recorded, holder, "chunk 1 failed: ValueError: boom", 1)

    assert recorded.ledger.get_chunk(holder, 1).state is ChunkState.FAILED
    assert_ended_once(recorded, one_place, holder, RunState.FAILED, before, waiting)


def test_a_refused_plan_ends_the_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str
) -> None:
    holder = new_run(recorded.ledger, pipeline=one_place, day=DAY)
    waiting = new_run(recorded.ledger, pipeline=one_place, day=DAY + timedelta(days=1))
    limited = dataclasses.replace(
        recorded, settings=recorded.settings.model_copy(update={"max_chunks_per_run": 1})
    )
    before = finished(one_place, RunState.FAILED)

    with pytest.raises(PlanTooLarge):
        steps.plan_run(limited, holder)
    assert steps.plan_run(limited, holder) is None

    assert recorded.ledger.get_chunks(holder) == []
    assert_ended_once(limited, one_place, holder, RunState.FAILED, before, waiting)


def test_a_start_the_broker_refuses_ends_the_run_once(recorded: Services, one_place: str) -> None:
    assert isinstance(recorded.enqueue, RecordingEnqueue)
    recorded.enqueue.error = ConnectionRefusedError("broker down")
    before = finished(one_place, RunState.FAILED)

    with pytest.raises(EnqueueFailed, match="broker down"):
        recorded.runs.start_run(one_place, interval=DAY)

    [run] = recorded.ledger.list_runs(pipeline=one_place)
    assert run.state is RunState.FAILED
    assert finished(one_place, RunState.FAILED) - before == 1


def test_a_chunk_message_of_a_failed_run_starts_nothing_and_counts_no_rows(
    recorded: Services, one_place: str
) -> None:
    holder, _ = holder_and_waiting(recorded, one_place)
    recorded.runs.end_run(holder, RunState.FAILED, "chunk 0 failed: boom")
    labels = {"pipeline": one_place}
    written = REGISTRY.get_sample_value("etl_rows_written_total", labels) or 0.0

    assert steps.transform_chunk(recorded, holder, 1) is None

    chunk = recorded.ledger.get_chunk(holder, 1)
    assert (chunk.state, chunk.attempts) == (ChunkState.PENDING, 0)
    assert (REGISTRY.get_sample_value("etl_rows_written_total", labels) or 0.0) == written


@pytest.fixture
def idle_broker(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost with the queues (and their dead-letter queues) and nothing consuming."""
    with scratch_vhost(f"{rabbitmq_vhost}-life-{uuid.uuid4().hex[:6]}") as vhost:
        url = f"{RABBITMQ_URL}/{vhost}"
        declare_topology(url)
        yield url


def test_a_chunk_message_rabbitmq_parked_ends_its_run_once_and_admits_the_waiting_run(
    recorded: Services, one_place: str, idle_broker: str
) -> None:
    holder, waiting = holder_and_waiting(recorded, one_place)
    # A worker started chunk 1, then rejected its message without recording why (its
    # ledger was down): RabbitMQ parks the message in etl.transform.dlq. Here a real
    # chunk message is taken and rejected by hand, no worker involved.
    assert recorded.ledger.start_chunk(holder, 1).chunk is not None
    app = make_celery(recorded.settings.model_copy(update={"broker_url": idle_broker}))
    celery_enqueue(app)(TASK_TRANSFORM_CHUNK, [holder, 1])
    with Connection(idle_broker) as connection:
        queue = Queue(TRANSFORM_QUEUE, no_declare=True)(connection.channel())
        message = wait_until(lambda: queue.get(no_ack=False), timeout_s=10, what="the message")
        message.reject(requeue=False)
    dead_letters = DeadLetterService(recorded.ledger, idle_broker, recorded.runs)
    before = finished(one_place, RunState.FAILED)

    wait_until(dead_letters.sync, timeout_s=10, what="the dead letter recorded")
    dead_letters.sync()

    run = recorded.ledger.get_run(holder)
    assert run.reason is not None and run.reason.startswith("chunk 1 dead-lettered: ")
    assert recorded.ledger.get_chunk(holder, 1).state is ChunkState.FAILED
    assert_ended_once(recorded, one_place, holder, RunState.FAILED, before, waiting)
