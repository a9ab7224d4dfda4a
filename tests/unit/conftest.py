"""Unit tests run with no services and without the developer's ETL_* environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from flask.testing import FlaskClient
from moto import mock_aws
from sqlalchemy import Engine

from etl.adapters.db import make_engine
from etl.adapters.ledger import Ledger, upgrade
from etl.adapters.s3 import S3PartWriter
from etl.bootstrap import Services
from etl.config import Settings

from builders import api_app, fake_services
from fakes import FakeServices, RecordingEnqueue

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read ETL_* variables; a value left in a developer's shell must not leak in.
    for name in list(os.environ):
        if name.startswith("ETL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated ledger in a SQLite file of this test's own."""
    engine = make_engine("sqlite:///" + str(tmp_path / "l.db"))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def fake_s3() -> Iterator[tuple[Any, S3Client]]:
    """One moto mock and S3 client per module (a client takes a fifth of a second to
    build); the ``services`` fixture resets moto's state, so no object outlives its test."""
    with mock_aws() as mock:
        client = boto3.client(
            "s3",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        yield mock, client


@pytest.fixture
def services(sqlite_engine: Engine, fake_s3: tuple[Any, S3Client]) -> Services:
    """Services on a SQLite ledger and source and moto's S3 (no services needed)."""
    mock, client = fake_s3
    mock.reset()
    parts = S3PartWriter(client, "unit-bucket")
    parts.ensure_bucket()
    return Services(
        settings=Settings(s3_bucket="unit-bucket", s3_prefix="etl"),
        ledger=Ledger(sqlite_engine),
        source_engine=sqlite_engine,
        parts=parts,
        enqueue=RecordingEnqueue(),
    )


@pytest.fixture
def ledger(sqlite_engine: Engine) -> Ledger:
    """The ledger on this test's SQLite file."""
    return Ledger(sqlite_engine)


@pytest.fixture
def fakes() -> FakeServices:
    """Every port in memory (tests/fakes.py), 2,000 sample orders as orders_daily's
    source, the real run lifecycle on them."""
    return fake_services(rows=2000)


@pytest.fixture
def enqueue(fakes: FakeServices) -> RecordingEnqueue:
    """A fake Enqueue port that records what would have been sent (the fakes' own)."""
    return fakes.enqueue


@pytest.fixture
def client(ledger: Ledger, enqueue: RecordingEnqueue) -> FlaskClient:
    """The HTTP API on the SQLite ledger, enqueueing into ``enqueue`` (builders.api_app)."""
    return api_app(ledger, enqueue).test_client()
