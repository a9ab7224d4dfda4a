"""In a process gevent has patched (the API's gunicorn workers), psycopg2 waits for
PostgreSQL as a greenlet: a database that never answers blocks no other greenlet, and
gives up after the bound; a real one still answers. Run in a child interpreter, so the
patching stays out of the test session."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

CHILD = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, sys, time

    import gevent
    import psycopg2

    from etl.adapters.gevent_postgres import wait_as_greenlet

    hung_port, real_dsn = sys.argv[1], sys.argv[2]
    ticks = []

    def tick():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.05)

    gevent.spawn(tick)
    report = {"installed": wait_as_greenlet(wait_s=1.0)}
    started = time.monotonic()
    try:
        psycopg2.connect(f"host=127.0.0.1 port={hung_port} dbname=x user=x connect_timeout=30")
        report["hung"] = "connected"
    except psycopg2.OperationalError as exc:
        report["hung"] = str(exc)
    report["hung_s"] = time.monotonic() - started
    report["ticks_meanwhile"] = len([t for t in ticks if t >= started])
    with psycopg2.connect(real_dsn) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 41 + 1")
        report["real"] = cursor.fetchone()[0]
    print(json.dumps(report))
    """
)


@pytest.fixture
def hung_postgres() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in held:
            sock.close()
        server.close()


def test_psycopg2_waits_as_a_greenlet_and_gives_up_on_a_silent_server(
    hung_postgres: int, postgres_url: str
) -> None:
    from sqlalchemy.engine import make_url

    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(hung_postgres), dsn],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["installed"] is True
    assert report["hung"] == "PostgreSQL did not answer within 1 s"
    assert 0.9 <= report["hung_s"] < 5  # its own bound, not libpq's connect_timeout=30
    assert report["ticks_meanwhile"] >= 10  # another greenlet ran all along
    assert report["real"] == 42


def test_outside_gevent_nothing_is_installed() -> None:
    from etl.adapters.gevent_postgres import gevent_patched, wait_as_greenlet

    assert gevent_patched() is False
    assert wait_as_greenlet() is False
