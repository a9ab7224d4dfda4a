"""Message signing with Celery's "auth" serializer, between real processes: a signed run
completes; unsigned, tampered and unknown-signer messages are not run, and are parked in
the dead-letter queue instead, where the dead-letter sync verifies each with the workers'
certificate store and records exactly why it was refused; a genuinely signed message a
task gave up on is recorded with its run."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from celery.security.certificate import Certificate, FSCertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from kombu import Connection, Producer

from etl.adapters.topology import PLAN_QUEUE, WORK_EXCHANGE
from etl.bootstrap import Services
from etl.config import Settings, settings_env
from etl.demo import seed_orders
from etl.domain.runs import RunState, Trigger
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import wait_for_run
from etl.worker.app import TASK_PLAN_RUN, make_celery

from support import ChildProcess, rabbitmqctl, scratch_vhost, wait_until

pytestmark = pytest.mark.e2e


def make_identity(directory: Path, name: str) -> tuple[Path, Path]:
    """A private key and a self-signed certificate, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture
def identities(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    store = tmp_path / "trusted"
    store.mkdir()
    workers = make_identity(tmp_path, "etl-workers")
    (store / "etl-workers.pem").write_bytes(workers[1].read_bytes())
    return {"trusted": workers, "stranger": make_identity(tmp_path, "stranger")}


@pytest.fixture
def signed_settings(
    service_settings: Settings,
    rabbitmq_vhost: str,
    identities: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> Iterator[Settings]:
    key, cert = identities["trusted"]
    with scratch_vhost(f"{rabbitmq_vhost}-signed") as vhost:
        yield service_settings.model_copy(
            update={
                "broker_url": service_settings.broker_url.rsplit("/", 1)[0] + f"/{vhost}",
                "security_key_file": str(key),
                "security_certificate_file": str(cert),
                "security_cert_store": str(tmp_path / "trusted"),
            }
        )


def signed_body(identity: tuple[Path, Path], store: str, run_id: str) -> bytes:
    """A plan_run body (Celery's protocol 2) signed by ``identity``."""
    key, cert = identity
    signer = SecureSerializer(
        PrivateKey(key.read_text()), Certificate(cert.read_text()), FSCertStore(store), "sha256"
    )
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    signed: bytes = signer.serialize([[run_id], {}, embed])
    return signed


def tampered(body: bytes, old: str, new: str) -> bytes:
    """The same signature over a body whose run id was swapped: what an attacker on the
    wire could try."""
    import base64

    raw = base64.b64decode(body)
    assert old.encode() in raw
    return base64.b64encode(raw.replace(old.encode(), new.encode()))


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


def dead_letter_depth(vhost: str) -> int:
    for line in rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name == f"{PLAN_QUEUE}.dlq":
            return int(count)
    return 0


def test_only_messages_signed_by_a_trusted_certificate_run(
    signed_settings: Settings,
    services: Services,
    identities: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    seed_orders(services.source_engine, 2_000)
    vhost = signed_settings.broker_url.rsplit("/", 1)[1]
    worker = ChildProcess.etl(["worker", "--concurrency", "1"], signed_settings, tmp_path / "w.log")
    try:
        worker.wait_for_log("ready.")
        # 1. signed by the CLI: the run and the worker's own chunk and commit messages
        done = subprocess.run(
            [sys.executable, "-m", "etl", "run", "orders_daily", "--date", "2025-06-01",
             "--param", "chunk_size=500", "--wait", "--timeout", "120"],
            env={**os.environ, **settings_env(signed_settings)},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout

        def queued_run(day: int) -> str:
            run, _ = services.ledger.create_run(
                pipeline="orders_daily", logical_date=date(2025, 7, day),
                trigger=Trigger.MANUAL, params={"chunk_size": 1000},
            )  # fmt: skip
            return run.id

        store = signed_settings.security_cert_store
        control, unsigned, changed, stranger, target = (queued_run(d) for d in range(1, 6))
        missing_run = str(uuid.uuid4())
        # 2. not signed: a plain JSON task, as an app without the key sends it
        plain = signed_settings.model_copy(
            update={"security_key_file": "", "security_certificate_file": "",
                    "security_cert_store": ""}
        )  # fmt: skip
        sent = {"unsigned": make_celery(plain).send_task(TASK_PLAN_RUN, args=[unsigned]).id}
        # 3. signed for one run, then changed to another: the signature no longer matches
        genuine = signed_body(identities["trusted"], store, changed)
        sent["tampered"] = publish(
            signed_settings.broker_url, tampered(genuine, changed, target), "application/data"
        )
        # 4. signed by a certificate the workers do not trust
        foreign = signed_body(identities["stranger"], str(identities["stranger"][1]), stranger)
        sent["stranger"] = publish(signed_settings.broker_url, foreign, "application/data")
        # 5. genuinely signed, for a run the ledger does not have: the task gives up on it
        sent["genuine"] = publish(
            signed_settings.broker_url,
            signed_body(identities["trusted"], store, missing_run),
            "application/data",
        )
        # the control: crafted like 3 and 4 but genuinely signed, so it runs
        publish(
            signed_settings.broker_url,
            signed_body(identities["trusted"], store, control),
            "application/data",
        )

        final = wait_for_run(services.ledger, control, timeout_s=120)
        assert final.state is RunState.SUCCEEDED, final.reason
        wait_until(lambda: dead_letter_depth(vhost) == 4, timeout_s=60, what="4 dead letters")
    finally:
        worker.stop()

    for run_id in (unsigned, changed, stranger, target):
        run = services.ledger.get_run(run_id)
        assert run.state is RunState.QUEUED and run.chunk_count is None, run
    # The consumer refused 2, 3 and 4 itself (rejected, so RabbitMQ dead-lettered them).
    log = worker.log_path.read_text()
    assert log.count("refused a task message and dead-lettered it") >= 3, log[-3000:]

    # The dead-letter sync verifies each against the workers' store and says exactly why.
    dead_letters = DeadLetterService.for_settings(services.ledger, signed_settings, print)
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
