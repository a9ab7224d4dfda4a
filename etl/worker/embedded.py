"""A worker inside this process, on threads: the embedded demo's (in-memory broker)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from etl.worker.app import EtlCelery


@contextmanager
def in_process_worker(app: EtlCelery, concurrency: int = 2) -> Iterator[None]:
    """Consume ``app``'s queues on ``concurrency`` threads until the block ends."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app, pool="threads", concurrency=concurrency, perform_ping_check=False, loglevel="WARNING"
    ) as worker:
        if worker.hub is not None:
            # An event loop sleeps up to 10 s between timers and sees a shutdown
            # request only when it wakes; a 0.2 s no-op timer makes it stop promptly.
            worker.hub.call_repeatedly(0.2, lambda: None)
        yield
