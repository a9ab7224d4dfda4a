"""psycopg2 that waits for PostgreSQL as a greenlet, in a process gevent has patched (the
API's gunicorn workers, ``etl api``).

psycopg2 is C: under gevent, each of its waits for the server (connecting, a query)
would block the whole worker, and with it every other request, ``/healthz`` included.
A hung database made ``/healthz`` wait 19.5 s behind two ``/readyz`` probes. With the
wait callback installed, libpq runs asynchronously and each wait is a greenlet's wait on
the socket, bounded: libpq's own ``connect_timeout`` does not apply to an asynchronous
connection, so a wait gives up after ``wait_s`` without a byte from the server.
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg2
import psycopg2.extensions

# The ledger engine's connect_timeout (etl.adapters.db.make_engine): the longest the API
# waits for PostgreSQL to say anything, connecting or answering a query.
WAIT_S = 10.0


def gevent_patched() -> bool:
    """Whether gevent has patched this process's sockets (a gevent gunicorn worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("socket"))


def wait_as_greenlet(wait_s: float = WAIT_S) -> bool:
    """Make psycopg2 yield to gevent while it waits for the server, if gevent has patched
    this process; True if it now does. Process-wide, and idempotent."""
    if not gevent_patched():
        return False
    from gevent.socket import wait_read, wait_write

    def wait(conn: Any) -> None:
        while True:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                waiter = wait_read
            elif state == psycopg2.extensions.POLL_WRITE:
                waiter = wait_write
            else:
                raise psycopg2.OperationalError(f"unexpected state from libpq's poll: {state}")
            try:
                waiter(conn.fileno(), timeout=wait_s)
            except TimeoutError:
                # psycopg2 closes the connection when its wait callback raises, and
                # SQLAlchemy then discards it from the pool (a DBAPI error on a closed one).
                raise psycopg2.OperationalError(
                    f"PostgreSQL did not answer within {wait_s:g} s"
                ) from None

    psycopg2.extensions.set_wait_callback(wait)
    return True
