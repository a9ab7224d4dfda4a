"""Celery's own broker connections over TLS, against the real RabbitMQ: a TLS relay on
loopback, with a certificate of a CA of the test's own, stands in front of the broker's
plain port. The app from make_celery(settings) publishes a task through it and reads it
back through it when the certificate is signed by ETL_BROKER_SSL_CA_FILE's CA and names
the host of ETL_BROKER_URL; a certificate of that CA for another host is refused, and
nothing reaches the queue."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from etl.adapters.topology import PLAN_QUEUE, declare_topology, queue_stats
from etl.config import Settings
from etl.worker.app import TASK_PLAN_RUN, make_celery

from support import RABBITMQ_URL, scratch_vhost, wait_until

pytestmark = pytest.mark.integration

BROKER_HOST, BROKER_PORT = "127.0.0.1", int(RABBITMQ_URL.rsplit(":", 1)[1])


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Path:
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None
) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Our CA, and two server certificates it signed: for 127.0.0.1, and for another host."""
    folder = tmp_path_factory.mktemp("broker-tls")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("test broker CA", ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": _write(folder, "ca", ca, ca_key)}
    for name, alt_name in {
        "loopback": x509.IPAddress(IPv4Address("127.0.0.1")),
        "elsewhere": x509.DNSName("broker.example.org"),
    }.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _certificate(name, key, ca.subject)
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths[name] = _write(folder, name, cert, key)
    return paths


class TlsRelay:
    """Accepts TLS on a loopback port and relays the plaintext to RabbitMQ's AMQP port;
    records each handshake's outcome."""

    def __init__(self, certificate: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, certificate.with_suffix(".key"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshakes.append(type(exc).__name__)
                raw.close()
                continue
            self.handshakes.append("ok")
            broker = socket.create_connection((BROKER_HOST, BROKER_PORT))
            threading.Thread(target=_pump, args=(tls, broker), daemon=True).start()
            threading.Thread(target=_pump, args=(broker, tls), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    for end in (source, target):
        with contextlib.suppress(OSError):
            end.close()


@pytest.fixture
def vhost(rabbitmq_vhost: str) -> Iterator[str]:
    """A vhost of this test's own, with the app's topology declared (plain AMQP)."""
    with scratch_vhost(f"{rabbitmq_vhost}-tls-{uuid.uuid4().hex[:6]}") as name:
        declare_topology(f"{RABBITMQ_URL}/{name}")
        yield name


def tls_settings(relay: TlsRelay, vhost: str, ca: Path) -> Settings:
    return Settings(
        broker_url=f"amqps://guest:guest@127.0.0.1:{relay.port}/{vhost}",
        broker_ssl_ca_file=str(ca),
    )


def test_celery_publishes_and_reads_a_task_through_verified_tls(
    certificates: dict[str, Path], vhost: str
) -> None:
    relay = TlsRelay(certificates["loopback"])
    try:
        app = make_celery(tls_settings(relay, vhost, certificates["ca"]))
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
    finally:
        relay.close()


def test_celery_refuses_a_certificate_of_its_ca_for_another_host(
    certificates: dict[str, Path], vhost: str
) -> None:
    relay = TlsRelay(certificates["elsewhere"])
    try:
        app = make_celery(tls_settings(relay, vhost, certificates["ca"]))

        with pytest.raises(Exception) as refused:
            app.send_task(TASK_PLAN_RUN, args=[str(uuid.uuid4())], retry=False)

        wait_until(lambda: relay.handshakes, timeout_s=10, what="the TLS handshake")
        assert relay.handshakes[0] != "ok", relay.handshakes
        assert "certificate is not valid for '127.0.0.1'" in str(refused.value)
        assert queue_stats(f"{RABBITMQ_URL}/{vhost}", [PLAN_QUEUE])[PLAN_QUEUE][0] == 0
    finally:
        relay.close()
