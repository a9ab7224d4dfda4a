"""Celery's own in-process worker (celery.contrib.pytest) on the session's services, for
the integration tests that run tasks on a real broker without a worker process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from etl.bootstrap import Services
from etl.config import Settings
from etl.worker.app import EtlCelery, make_celery


@pytest.fixture
def celery_app(service_settings: Settings, services: Services) -> Iterator[EtlCelery]:
    from etl.adapters.topology import declare_topology

    declare_topology(service_settings.broker_url)
    yield make_celery(service_settings)


@pytest.fixture
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture
def celery_worker_parameters() -> dict[str, Any]:
    # Our app has no celery.ping task; the ledger, not a ping, tells us work was done.
    return {"perform_ping_check": False, "concurrency": 2}


@pytest.fixture
def worker(celery_worker: Any) -> Any:
    """Celery's in-process worker, quick to stop.

    Its event loop sleeps up to 10 s between timers and notices a shutdown request only
    when it wakes; a 0.2 s no-op timer keeps teardown well under a second.
    """
    celery_worker.hub.call_repeatedly(0.2, lambda: None)
    return celery_worker
