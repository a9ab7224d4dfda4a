"""Every connection of ours to the broker uses the TLS settings Celery gets, and Celery's
own connection (the one every task is sent and received on) verifies them: a stand-in
TLS server on loopback, with a certificate of a CA of the test's own, sees each one
finish its handshake only when ETL_BROKER_SSL_CA_FILE names that CA, and Celery's only
when the certificate also names the host of ETL_BROKER_URL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from etl.adapters.dead_letter_queues import drain_dead_letter_queues, republish
from etl.adapters.probe import broker_problem
from etl.adapters.topology import BrokerTls, declare_topology, queue_stats
from etl.config import Settings
from etl.worker.app import make_celery

from builders import Authority
from support import TlsServer, tls_server, wait_until

LOOPBACK = x509.IPAddress(IPv4Address("127.0.0.1"))


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """A CA of the test's own, which signs the stand-ins' certificates."""
    return Authority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def stand_in(authority: Authority) -> Iterator[TlsServer]:
    """A stand-in broker on loopback with a certificate of ``authority`` for 127.0.0.1."""
    with tls_server(*authority.issue("broker", LOOPBACK)) as server:
        yield server


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
    stand_in: TlsServer,
    authority: Authority,
    connect: Callable[[str, BrokerTls], Any],
    trusted: bool,
) -> None:
    url = f"amqps://guest:guest@127.0.0.1:{stand_in.port}//"
    ca_file = str(authority.certificate) if trusted else ""
    settings = Settings(broker_url=url, broker_ssl_ca_file=ca_file)

    def attempt() -> None:
        # The stand-in is no broker, so each call fails after the handshake, or at it.
        with contextlib.suppress(Exception):
            connect(url, settings.broker_use_ssl)

    # Only the first handshake matters: kombu's second try, two seconds later, is not
    # waited for (it finds the stand-in closed).
    threading.Thread(target=attempt, daemon=True).start()
    wait_until(lambda: stand_in.handshakes, timeout_s=10, what="a TLS handshake", poll_s=0.01)
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
    "our CA, for 127.0.0.1": ([LOOPBACK], "127.0.0.1", True),
    "our CA, for localhost": ([x509.DNSName("localhost")], "localhost", True),
    "our CA, for another host": ([x509.DNSName("broker.example.org")], "127.0.0.1", False),
    "our CA, for 127.0.0.1 reached as localhost": ([LOOPBACK], "localhost", False),
}


@pytest.mark.parametrize(
    ("alt_names", "host", "verified"), CELERY_CASES.values(), ids=CELERY_CASES.keys()
)
def test_celerys_own_connection_verifies_the_ca_and_the_hostname(
    authority: Authority, alt_names: list[x509.GeneralName], host: str, verified: bool
) -> None:
    with tls_server(*authority.issue("broker", *alt_names)) as server:
        url = f"amqps://guest:guest@{host}:{server.port}//"
        # The stand-in is no broker: the connection fails after the handshake, or at it.
        with contextlib.suppress(Exception):
            celery_connects(url, str(authority.certificate))
        # The stand-in records the handshake on its own thread, maybe after the client gave up.
        wait_until(lambda: server.handshakes, timeout_s=10, what="Celery's TLS handshake")
        assert (server.handshakes[0] == "ok") is verified, server.handshakes


def test_celerys_own_connection_refuses_a_certificate_of_a_ca_it_was_not_given(
    authority: Authority, stand_in: TlsServer, tmp_path: Path
) -> None:
    another = Authority.create(tmp_path, "another CA")
    with contextlib.suppress(Exception):  # the stand-in's certificate is not of this CA
        celery_connects(
            f"amqps://guest:guest@127.0.0.1:{stand_in.port}//", str(another.certificate)
        )
    wait_until(lambda: stand_in.handshakes, timeout_s=10, what="Celery's TLS handshake")
    assert stand_in.handshakes[0] != "ok", stand_in.handshakes
