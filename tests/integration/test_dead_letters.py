"""Dead letters against the real RabbitMQ and PostgreSQL, on a vhost with no workers:
drain, record, show, replay once, purge."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date

import pytest
from kombu import Connection, Producer, Queue

from etl.adapters.topology import TRANSFORM_QUEUE, WORK_EXCHANGE, declare_topology
from etl.bootstrap import Services
from etl.cli import main
from etl.config import Settings, settings_env
from etl.dead_letters import DeadLetterService
from etl.domain.chunks import plan_chunks
from etl.domain.dead_letters import DeadLetterState
from etl.domain.runs import ChunkState, RunState, Trigger

from support import RABBITMQ_URL, scratch_vhost, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def idle_broker(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost with the topology declared and nothing consuming it."""
    with scratch_vhost(f"{rabbitmq_vhost}-dlq-{uuid.uuid4().hex[:6]}") as vhost:
        url = f"{RABBITMQ_URL}/{vhost}"
        declare_topology(url)
        yield url


def park(url: str, body: bytes, headers: dict[str, str]) -> None:
    """Publish to etl.transform and reject it, as a worker would: RabbitMQ dead-letters it."""
    with Connection(url) as connection:
        channel = connection.channel()
        Producer(channel).publish(
            body,
            exchange=WORK_EXCHANGE,
            routing_key=TRANSFORM_QUEUE,
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
        )
        work = Queue(TRANSFORM_QUEUE, no_declare=True)(channel)
        message = wait_until(lambda: work.get(no_ack=False), timeout_s=10, what="the message")
        message.reject(requeue=False)


def queue_depth(url: str, name: str) -> int:
    with Connection(url) as connection:
        _, count, _ = Queue(name, no_declare=True)(connection.channel()).queue_declare(passive=True)
        return int(count)


def test_a_parked_message_is_recorded_shown_replayed_once_and_purged(
    idle_broker: str,
    services: Services,
    service_settings: Settings,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task_id = str(uuid.uuid4())
    body = json.dumps([["no-such-run", 0], {}, {}]).encode()
    park(idle_broker, body, {"task": "etl.transform_chunk", "id": task_id})
    wait_until(
        lambda: queue_depth(idle_broker, f"{TRANSFORM_QUEUE}.dlq") == 1, timeout_s=10, what="DLQ"
    )

    dead_letters = DeadLetterService(services.ledger, idle_broker, lambda run_id: None)
    [letter] = [x for x in dead_letters.list_letters() if x.task_id == task_id]
    assert queue_depth(idle_broker, f"{TRANSFORM_QUEUE}.dlq") == 0  # moved into the ledger
    assert letter.queue == TRANSFORM_QUEUE and letter.death_reason == "rejected"
    assert letter.run_id == "no-such-run" and letter.chunk_index == 0
    assert letter.reason == "run no-such-run is not in the ledger"
    assert letter.body == body and letter.headers["x-death"][0]["queue"] == TRANSFORM_QUEUE

    # `etl dlq show` prints it in full, x-death included.
    for name, value in settings_env(
        service_settings.model_copy(update={"broker_url": idle_broker})
    ).items():
        monkeypatch.setenv(name, value)
    assert main(["dlq", "show", str(letter.id)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task_id"] == task_id and shown["headers"]["x-death"][0]["reason"] == "rejected"

    # Replay republishes the body as it was, once, without the old death headers.
    # Scoped to this message's run: the session's ledger holds other suites' dead letters.
    assert main(["dlq", "replay", "--all", "--run", "no-such-run"]) == 0
    assert f"dead letter {letter.id}: republished to etl.transform" in capsys.readouterr().out
    with Connection(idle_broker) as connection:
        work = Queue(TRANSFORM_QUEUE, no_declare=True)(connection.channel())
        again = wait_until(lambda: work.get(no_ack=True), timeout_s=10, what="the replayed message")
        assert again.body in (body, body.decode()) and "x-death" not in (again.headers or {})
        assert again.headers["id"] == task_id
    assert main(["dlq", "replay", str(letter.id)]) == 0
    assert "already replayed; nothing sent" in capsys.readouterr().out
    assert queue_depth(idle_broker, TRANSFORM_QUEUE) == 0

    # Dead again (same task id): the same record, dead once more; then purged.
    park(idle_broker, body, {"task": "etl.transform_chunk", "id": task_id})
    [again_dead] = [x for x in dead_letters.list_letters() if x.task_id == task_id]
    assert again_dead.id == letter.id and again_dead.replay_count == 1
    assert main(["dlq", "purge", "--run", "no-such-run"]) == 0
    assert services.ledger.get_dead_letter(letter.id).state is DeadLetterState.PURGED
    assert [x for x in dead_letters.list_letters() if x.task_id == task_id] == []


def test_a_chunk_the_broker_parks_on_its_own_fails_its_active_run_naming_it(
    idle_broker: str, services: Services
) -> None:
    # As a quorum queue's delivery limit would: parked with no worker failing the run.
    ledger = services.ledger
    run, _ = ledger.create_run(
        pipeline="orders_daily",
        logical_date=date(2026, 11, 20),
        trigger=Trigger.MANUAL,
        params={},
        idempotency_key=f"dlq-{uuid.uuid4()}",
    )
    ledger.move_run(run.id, RunState.PLANNING)
    ledger.record_plan(run.id, plan_chunks(1, 10, 5), {"key_column": "id"})
    ledger.move_run(run.id, RunState.RUNNING)
    body = json.dumps([[run.id, 1], {}, {}]).encode()
    park(idle_broker, body, {"task": "etl.transform_chunk", "id": str(uuid.uuid4())})

    DeadLetterService(services.ledger, idle_broker, lambda run_id: None).sync()

    failed = ledger.get_run(run.id)
    assert failed.state is RunState.FAILED
    assert failed.reason is not None and failed.reason.startswith("chunk 1 dead-lettered: ")
    chunks = ledger.get_chunks(run.id)
    assert [c.state for c in chunks] == [ChunkState.PENDING, ChunkState.FAILED]
