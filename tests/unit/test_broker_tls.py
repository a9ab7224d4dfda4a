"""Every connection of ours to the broker uses the TLS settings Celery gets, and Celery's
own connection (the one every task is sent and received on) verifies them: a stand-in
TLS server on loopback, with a certificate of a CA of the test's own, sees each one
finish its handshake only when ETL_BROKER_SSL_CA_FILE names that CA, and Celery's only
when the certificate also names the host of ETL_BROKER_URL."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from etl.adapters.dead_letter_queues import drain_dead_letter_queues, republish
from etl.adapters.probe import broker_problem
from etl.adapters.topology import BrokerTls, declare_topology, queue_stats
from etl.config import Settings
from etl.worker.app import make_celery

from support import wait_until


class TlsStandIn:
    """Accepts TLS on a loopback port and records how each handshake went."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                with self.context.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes.append("ok")
                    tls.recv(8)  # the AMQP greeting; then hang up: we are not a broker
            except (ssl.SSLError, OSError) as exc:
                self.handshakes.append(type(exc).__name__)
            finally:
                raw.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: its own CA."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test broker CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "broker.pem", folder / "broker.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class Authority:
    """A CA of the test's own and, signed by it, certificates for chosen names."""

    certificate: Path
    key: ec.EllipticCurvePrivateKey
    folder: Path

    def issue(self, name: str, *alt_names: x509.GeneralName) -> tuple[Path, Path]:
        """A server certificate for ``alt_names`` (and its key) signed by this CA."""
        issuer = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return write_pair(self.folder, name, cert, key)


def write_pair(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A CA that signs certificates, for the hostname checks."""
    folder = tmp_path_factory.mktemp("ca")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test broker issuing CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, _ = write_pair(folder, "ca", cert, key)
    return Authority(cert_path, key, folder)


@pytest.fixture
def stand_in(certificate: tuple[Path, Path]) -> Iterator[TlsStandIn]:
    server = TlsStandIn(*certificate)
    yield server
    server.close()


CONNECTIONS: dict[str, Callable[[str, BrokerTls], Any]] = {
    "readiness probe": lambda url, tls: broker_problem(url, 3, tls),
    "declare topology": lambda url, tls: declare_topology(url, ssl=tls),
    "queue figures": lambda url, tls: queue_stats(url, ["etl.plan"], ssl=tls),
    "drain dead letters": lambda url, tls: drain_dead_letter_queues(url, print, ssl=tls),
    "replay a dead letter": lambda url, tls: republish(
        url,
        queue="etl.plan",
        body=b"[]",
        headers={},
        content_type="application/json",
        content_encoding="utf-8",
        ssl=tls,
    ),
}


@pytest.mark.parametrize("connect", CONNECTIONS.values(), ids=CONNECTIONS.keys())
@pytest.mark.parametrize("trusted", [True, False], ids=["our CA", "no CA given"])
def test_each_broker_connection_verifies_tls_with_the_configured_ca(
    stand_in: TlsStandIn,
    certificate: tuple[Path, Path],
    connect: Callable[[str, BrokerTls], Any],
    trusted: bool,
) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{stand_in.port}//"
    settings = Settings(broker_url=url, broker_ssl_ca_file=str(certificate[0]) if trusted else "")

    # The stand-in is no broker, so each call fails after the handshake, or at it.
    with contextlib.suppress(Exception):
        connect(url, settings.broker_use_ssl)

    wait_until(lambda: stand_in.handshakes, timeout_s=10, what="a TLS handshake")
    if trusted:
        assert stand_in.handshakes[0] == "ok"
    else:  # the certificate is verified, and nothing vouches for this one
        assert stand_in.handshakes[0] != "ok"


def celery_connects(url: str, ca_file: str) -> None:
    """Celery's own broker connection, as a worker or a sender opens it."""
    app = make_celery(Settings(broker_url=url, broker_ssl_ca_file=ca_file))
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=0)


# (name, the certificate's alternative names, the URL's host, verified?)
CELERY_CASES = {
    "our CA, for 127.0.0.1": (
        [x509.IPAddress(IPv4Address("127.0.0.1"))],
        "127.0.0.1",
        True,
    ),
    "our CA, for localhost": ([x509.DNSName("localhost")], "localhost", True),
    "our CA, for another host": ([x509.DNSName("broker.example.org")], "127.0.0.1", False),
    "our CA, for 127.0.0.1 reached as localhost": (
        [x509.IPAddress(IPv4Address("127.0.0.1"))],
        "localhost",
        False,
    ),
}


@pytest.mark.parametrize(
    ("alt_names", "host", "verified"), CELERY_CASES.values(), ids=CELERY_CASES.keys()
)
def test_celerys_own_connection_verifies_the_ca_and_the_hostname(
    authority: Authority, alt_names: list[x509.GeneralName], host: str, verified: bool
) -> None:
    server = TlsStandIn(*authority.issue("broker", *alt_names))
    try:
        url = f"amqps://guest:guest@{host}:{server.port}//"
        # The stand-in is no broker: the connection fails after the handshake, or at it.
        with contextlib.suppress(Exception):
            celery_connects(url, str(authority.certificate))
        # The stand-in records the handshake on its own thread, maybe after the client gave up.
        wait_until(lambda: server.handshakes, timeout_s=10, what="Celery's TLS handshake")
        assert (server.handshakes[0] == "ok") is verified, server.handshakes
    finally:
        server.close()


def test_celerys_own_connection_refuses_a_certificate_of_a_ca_it_was_not_given(
    authority: Authority, certificate: tuple[Path, Path]
) -> None:
    server = TlsStandIn(*authority.issue("broker", x509.IPAddress(IPv4Address("127.0.0.1"))))
    try:
        with contextlib.suppress(Exception):  # the CA of the other fixture, not this one's
            celery_connects(f"amqps://guest:guest@127.0.0.1:{server.port}//", str(certificate[0]))
        wait_until(lambda: server.handshakes, timeout_s=10, what="Celery's TLS handshake")
        assert server.handshakes[0] != "ok", server.handshakes
    finally:
        server.close()
