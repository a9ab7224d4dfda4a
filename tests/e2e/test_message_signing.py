"""Message signing with Celery's "auth" serializer, between real processes: a signed run
completes; unsigned, tampered and unknown-signer messages are not run, and are parked in
the dead-letter queue instead, where the dead-letter sync verifies each with the workers'
certificate store and records exactly why it was refused; a genuinely signed message a
task gave up on is recorded with its run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from kombu import Connection, Producer

from etl.adapters.sample_orders import seed_orders
from etl.adapters.topology import PLAN_QUEUE, WORK_EXCHANGE
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import RunState, Trigger
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import wait_for_run
from etl.worker.app import TASK_PLAN_RUN, make_celery

from builders import SigningIdentities, signed, signing_identities, tampered, task_body, utc_day
from support import ChildProcess, queue_depth, run_etl, scratch_vhost, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def identities(tmp_path: Path) -> SigningIdentities:
    return signing_identities(tmp_path)


@pytest.fixture
def signed_settings(
    service_settings: Settings,
    rabbitmq_vhost: str,
    identities: SigningIdentities,
) -> Iterator[Settings]:
    key, cert = identities.trusted
    with scratch_vhost(f"{rabbitmq_vhost}-signed") as vhost:
        yield service_settings.model_copy(
            update={
                "broker_url": service_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}",
                "security_key_file": str(key),
                "security_certificate_file": str(cert),
                "security_cert_store": str(identities.store),
            }
        )


def publish(broker_url: str, body: bytes, content_type: str) -> str:
    """A plan_run message with this body; returns its task id."""
    task_id = str(uuid.uuid4())
    with Connection(broker_url) as connection:
        Producer(connection.channel()).publish(
            body,
            exchange=WORK_EXCHANGE,
            routing_key=PLAN_QUEUE,
            headers={"task": TASK_PLAN_RUN, "id": task_id, "lang": "py"},
            content_type=content_type,
            content_encoding="utf-8",
        )
    return task_id


def test_only_messages_signed_by_a_trusted_certificate_run(
    signed_settings: Settings,
    services: Services,
    identities: SigningIdentities,
    tmp_path: Path,
) -> None:
    seed_orders(services.source_engine, 2_000)
    vhost = signed_settings.broker_url.rsplit("/", 1)[1]
    worker = ChildProcess.etl(["worker", "--concurrency", "1"], signed_settings, tmp_path / "w.log")
    try:
        worker.wait_for_log("ready.")
        # 1. signed by the CLI: the run and the worker's own chunk and commit messages
        done = run_etl(
            signed_settings, "run", "orders_daily", "--date", "2025-06-01",
            "--param", "chunk_size=500", "--wait", "--timeout", "120", timeout_s=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout

        def queued_run(day: int) -> str:
            run, _ = services.ledger.create_run(
                pipeline="orders_daily",
                interval=utc_day(date(2025, 7, day)),
                logical_date=date(2025, 7, day),
                trigger=Trigger.MANUAL,
                params={"chunk_size": 1000},
            )
            return run.id

        store = identities.store
        control, unsigned, changed, stranger, target = (queued_run(d) for d in range(1, 6))
        missing_run = str(uuid.uuid4())
        # 2. not signed: a plain JSON task, as an app without the key sends it
        plain = signed_settings.model_copy(
            update={"security_key_file": "", "security_certificate_file": "",
                    "security_cert_store": ""}
        )  # fmt: skip
        sent = {"unsigned": make_celery(plain).send_task(TASK_PLAN_RUN, args=[unsigned]).id}
        # 3. signed for one run, then changed to another: the signature no longer matches
        genuine = signed(identities.trusted, task_body(changed), store)
        sent["tampered"] = publish(
            signed_settings.broker_url, tampered(genuine, changed, target), "application/data"
        )
        # 4. signed by a certificate the workers do not trust
        foreign = signed(identities.stranger, task_body(stranger))
        sent["stranger"] = publish(signed_settings.broker_url, foreign, "application/data")
        # 5. genuinely signed, for a run the ledger does not have: the task gives up on it
        sent["genuine"] = publish(
            signed_settings.broker_url,
            signed(identities.trusted, task_body(missing_run), store),
            "application/data",
        )
        # the control: crafted like 3 and 4 but genuinely signed, so it runs
        publish(
            signed_settings.broker_url,
            signed(identities.trusted, task_body(control), store),
            "application/data",
        )

        final = wait_for_run(services.ledger, control, timeout_s=120)
        assert final.state is RunState.SUCCEEDED, final.reason
        wait_until(
            lambda: queue_depth(vhost, f"{PLAN_QUEUE}.dlq") == 4,
            timeout_s=60,
            what="4 dead letters",
        )
    finally:
        worker.stop()

    for run_id in (unsigned, changed, stranger, target):
        run = services.ledger.get_run(run_id)
        assert run.state is RunState.QUEUED and run.chunk_count is None, run
    # The consumer refused 2, 3 and 4 itself (rejected, so RabbitMQ dead-lettered them).
    log = worker.log_path.read_text()
    assert log.count("refused a task message and dead-lettered it") >= 3, log[-3000:]

    # The dead-letter sync verifies each against the workers' store and says exactly why.
    dead_letters = DeadLetterService.for_settings(services.ledger, signed_settings, services.runs)
    dead_letters.sync()
    letters = {
        name: next(
            x
            for x in services.ledger.list_dead_letters(state=None, limit=100_000)
            if x.task_id == id_
        )
        for name, id_ in sent.items()
    }
    assert letters["unsigned"].reason.startswith(
        "not signed: content type 'application/json', and the workers run only signed messages"
    )
    assert letters["tampered"].reason.startswith("the signature does not verify")
    assert letters["stranger"].reason.startswith(
        "signed by a certificate the workers do not trust: 'stranger "
    )
    assert {letters[name].run_id for name in ("unsigned", "tampered", "stranger")} == {None}
    # The genuinely signed one names its run: a run the ledger does not have.
    assert letters["genuine"].run_id == missing_run
    assert letters["genuine"].reason == f"run {missing_run} is not in the ledger"
    for run_id in (unsigned, changed, stranger, target):
        assert services.ledger.get_run(run_id).state is RunState.QUEUED
