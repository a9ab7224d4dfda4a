"""Fixtures for tests that use the real local services.

Each test session gets its own RabbitMQ vhost and its own PostgreSQL database, both
removed at the end, so sessions cannot disturb each other. S3 is moto's server, in a
process of its own on a free loopback port, reachable from worker subprocesses. Locally
a test whose service is down is skipped with the reason; in CI (CI=true) it fails
instead.

A test whose fault reaches past a vhost or a database gets its own of what it breaks:
a RabbitMQ node of its own to stop (support.scratch_rabbitmq_node), a Redis database
of its own to flush (support.scratch_redis_db); and it terminates only backends of its
session's database.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from etl.adapters.probe import broker_problem, database_problem, result_backend_problem
from etl.bootstrap import Services, build_services
from etl.config import Settings

from support import (
    API_TOKEN,
    POSTGRES_ADMIN_URL,
    RABBITMQ_URL,
    REDIS_URL,
    SESSION_TAG,
    moto_s3_server,
    require_service,
    scratch_database,
    scratch_vhost,
)

# Celery's own fixtures (celery_app, celery_worker, ...) for in-process workers.
pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(scope="session", autouse=True)
def _aws_test_credentials() -> None:
    # moto accepts anything; boto3 only needs something to sign with. Set for worker
    # subprocesses too, which inherit the environment.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this session, dropped at the end."""
    require_service("PostgreSQL", database_problem(POSTGRES_ADMIN_URL))
    with scratch_database(POSTGRES_ADMIN_URL, f"etl_test_{SESSION_TAG}") as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of this session's own on the local broker (name), deleted at the end."""
    require_service("RabbitMQ", broker_problem(RABBITMQ_URL + "//"))
    if shutil.which("rabbitmqctl") is None:
        require_service("rabbitmqctl", "not on PATH (needed to create a test vhost)")
    with scratch_vhost(f"etl-test-{SESSION_TAG}") as vhost:
        yield vhost


@pytest.fixture(scope="session")
def broker_url(rabbitmq_vhost: str) -> str:
    """The AMQP URL of this session's vhost."""
    return f"{RABBITMQ_URL}/{rabbitmq_vhost}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis result backend (keys are unique per task id and expire)."""
    require_service("Redis", result_backend_problem(REDIS_URL))
    return REDIS_URL


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this process and its children."""
    with moto_s3_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint_url:
        yield endpoint_url


@pytest.fixture(scope="session")
def service_settings(
    broker_url: str, redis_url: str, postgres_url: str, s3_endpoint: str
) -> Settings:
    """Settings that point every adapter at this session's real services."""
    return Settings(
        broker_url=broker_url,
        result_backend=redis_url,
        database_url=postgres_url,
        s3_endpoint_url=s3_endpoint,
        s3_bucket=f"etl-test-{SESSION_TAG}",
        api_token=SecretStr(API_TOKEN),
        task_soft_time_limit_s=120,
        task_time_limit_s=150,
        result_expires_s=3600,
        log_level="INFO",
    )


@pytest.fixture(scope="session")
def services(service_settings: Settings) -> Iterator[Services]:
    """Migrated ledger, source engine and S3 writer on the real services."""
    built = build_services(service_settings)
    built.parts.ensure_bucket()
    yield built
    built.close()
