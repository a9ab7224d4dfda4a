"""The deployment's broker users doing their jobs: the RabbitMQ definitions imported into
the local broker, the workers started with the compose file's own commands as the
worker's user, a run sent as the API's user, Beat's and Flower's users at work, and the
workers answering the compose file's health checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.config import Settings
from etl.domain.runs import RunState
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import TASK_RECONCILE, celery_enqueue, make_celery

from deploy_support import ImportedDefinitions, interpolate, load_compose
from support import ChildProcess, assert_run_output_matches_source, wait_until

pytestmark = pytest.mark.e2e

SERVICES = load_compose()["services"]
WORKER_SERVICES = ("worker-plan-commit", "worker-transform")
SOURCE_ROWS = 6_000


@dataclass
class Deployment:
    """The imported definitions and a worker process per compose worker service."""

    definitions: ImportedDefinitions
    settings: Settings
    workers: dict[str, ChildProcess]

    def as_role(self, role: str) -> Settings:
        """The session's settings, connecting to the broker as one role's user."""
        return self.settings.model_copy(update={"broker_url": self.definitions.url(role)})


@pytest.fixture(scope="module")
def deployment(
    services: Services, service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    definitions = ImportedDefinitions(uuid.uuid4().hex[:8])
    logs = tmp_path_factory.mktemp("deployed-workers")
    workers: dict[str, ChildProcess] = {}
    try:
        definitions.load()
        seed_orders(services.source_engine, SOURCE_ROWS)
        deployed = Deployment(definitions, service_settings, workers)
        for name in WORKER_SERVICES:
            workers[name] = ChildProcess.etl(
                SERVICES[name]["command"], deployed.as_role("etl-worker"), logs / f"{name}.log"
            )
        for worker in workers.values():
            worker.wait_for_log("ready.")
        yield deployed
    finally:
        for worker in workers.values():
            worker.stop()
        definitions.remove()


def test_a_run_sent_as_the_api_user_is_done_by_the_worker_user(
    deployment: Deployment, services: Services
) -> None:
    api = make_celery(deployment.as_role("etl-api"))
    run, created = RunService(services.ledger, celery_enqueue(api)).start_run(
        "orders_daily",
        interval=date(2022, 2, 2),
        params={"chunk_size": 2_000},
        idempotency_key=f"deployed-{uuid.uuid4()}",
    )
    assert created

    final = wait_for_run(services.ledger, run.id, timeout_s=120)

    assert final.state is RunState.SUCCEEDED, final.reason
    assert final.chunk_count == 3
    assert_run_output_matches_source(services, final)


def test_a_task_sent_as_the_beat_user_is_run(deployment: Deployment) -> None:
    beat = make_celery(deployment.as_role("etl-beat"))

    sent = beat.send_task(TASK_RECONCILE)

    worker = deployment.workers["worker-plan-commit"]
    wait_until(
        lambda: f"{TASK_RECONCILE}[{sent.id}] succeeded" in worker.log(),
        timeout_s=60,
        what="the reconciler sent by Beat's user to run",
    )


def test_flower_user_sees_both_workers(deployment: Deployment) -> None:
    flower = make_celery(deployment.as_role("etl-flower"))
    host = socket.gethostname()

    replies = flower.control.ping(timeout=10, limit=2)

    names = {name for reply in replies for name in reply}
    assert {f"plan-commit@{host}", f"transform@{host}"} <= names


@pytest.mark.parametrize("service", WORKER_SERVICES)
def test_each_worker_answers_its_compose_health_check(deployment: Deployment, service: str) -> None:
    kind, command = SERVICES[service]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    env = {
        **os.environ,
        # What the container has: its own broker URL, its hostname, and the venv on PATH.
        "ETL_BROKER_URL": deployment.definitions.url("etl-worker"),
        "HOSTNAME": socket.gethostname(),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    checked = subprocess.run(
        ["sh", "-c", interpolate(command, {})],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "pong" in checked.stdout
