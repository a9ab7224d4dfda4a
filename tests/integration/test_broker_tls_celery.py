"""Celery's own broker connections over TLS, against the real RabbitMQ: a TLS relay on
loopback, with a certificate of a CA of the test's own, stands in front of the broker's
plain port. The app from make_celery(settings) publishes a task through it and reads it
back through it when the certificate is signed by ETL_BROKER_SSL_CA_FILE's CA and names
the host of ETL_BROKER_URL; a certificate of that CA for another host is refused, and
nothing reaches the queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509

from etl.adapters.topology import PLAN_QUEUE, declare_topology, queue_stats
from etl.config import Settings
from etl.worker.app import TASK_PLAN_RUN, make_celery

from builders import Authority
from support import RABBITMQ_URL, TlsServer, scratch_vhost, tls_server, wait_until

pytestmark = pytest.mark.integration

BROKER = "127.0.0.1", int(RABBITMQ_URL.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """Our CA: ETL_BROKER_SSL_CA_FILE names its certificate."""
    return Authority.create(tmp_path_factory.mktemp("broker-tls"))


@pytest.fixture
def vhost(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost of this test's own, with the app's topology declared (plain AMQP)."""
    with scratch_vhost(f"{rabbitmq_vhost}-tls-{uuid.uuid4().hex[:6]}") as name:
        declare_topology(f"{RABBITMQ_URL}/{name}")
        yield name


def tls_settings(relay: TlsServer, vhost: str, ca: Path) -> Settings:
    return Settings(
        broker_url=f"amqps://guest:guest@127.0.0.1:{relay.port}/{vhost}",
        broker_ssl_ca_file=str(ca),
    )


def test_celery_publishes_and_reads_a_task_through_verified_tls(
    authority: Authority, vhost: str
) -> None:
    loopback = authority.issue("loopback", x509.IPAddress(IPv4Address("127.0.0.1")))
    with tls_server(*loopback, relay_to=BROKER) as relay:
        app = make_celery(tls_settings(relay, vhost, authority.certificate))
        run_id = str(uuid.uuid4())

        app.send_task(TASK_PLAN_RUN, args=[run_id])  # confirmed by the broker, over TLS

        assert queue_stats(f"{RABBITMQ_URL}/{vhost}", [PLAN_QUEUE])[PLAN_QUEUE][0] == 1
        with app.connection_for_read() as connection:  # a worker's connection, over TLS
            [plan_queue] = [q for q in app.conf.task_queues if q.name == PLAN_QUEUE]
            message = plan_queue(connection.default_channel).get()
            assert message is not None
            assert message.headers["task"] == TASK_PLAN_RUN
            assert message.decode()[0] == [run_id]
            message.ack()
        assert relay.handshakes and set(relay.handshakes) == {"ok"}


def test_celery_refuses_a_certificate_of_its_ca_for_another_host(
    authority: Authority, vhost: str
) -> None:
    elsewhere = authority.issue("elsewhere", x509.DNSName("broker.example.org"))
    with tls_server(*elsewhere, relay_to=BROKER) as relay:
        app = make_celery(tls_settings(relay, vhost, authority.certificate))

        with pytest.raises(Exception) as refused:
            app.send_task(TASK_PLAN_RUN, args=[str(uuid.uuid4())], retry=False)

        wait_until(lambda: relay.handshakes, timeout_s=10, what="the TLS handshake")
        assert relay.handshakes[0] != "ok", relay.handshakes
        assert "certificate is not valid for '127.0.0.1'" in str(refused.value)
        assert queue_stats(f"{RABBITMQ_URL}/{vhost}", [PLAN_QUEUE])[PLAN_QUEUE][0] == 0
