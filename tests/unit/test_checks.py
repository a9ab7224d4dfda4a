"""``etl check`` and the start-up checks (etl/service/checks.py): which checks, in which
order, each ok or the problem with its fix; on a fake of the probes, and the command on
a SQLite ledger, closed ports and moto (the real services: tests/e2e/test_deployment_checks.py)."""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from etl.adapters.probe import SettingsProbes, bucket_exists, bucket_problem, write_probe
from etl.bootstrap import Services
from etl.cli import main
from etl.config import Settings
from etl.pipelines import PIPELINES
from etl.service.checks import (
    FIX_MIGRATE,
    FIX_QUEUES,
    CheckResult,
    bucket_refusal,
    check_pipelines,
    run_checks,
)

ORDER = ["ledger", "source", "broker", "queues", "result-backend", "bucket", "pipelines"]
QUEUES = ["etl.unroutable", "etl.plan.dlq", "etl.plan"]
T = TypeVar("T")


@dataclass
class FakeProbes:
    """The deployment as the checks see it: everything answers unless told otherwise.
    A problem set to an exception is raised, as a probe that cannot tell does."""

    ledger_at: str = "postgresql://etl@db/etl"
    source_at: str = "postgresql://etl@db/etl"
    broker_at: str = "amqp://etl:***@mq:5672/etl"
    backend_at: str = "redis://:***@redis:6379/0"
    bucket: str = "outputs"
    endpoint: str = "http://minio:9000"
    prefix_at: str = "s3://outputs/etl/"
    code_schema_version: int = 7
    version: int | Exception | None = 7
    source_problem: str | None = None
    broker_problem: str | None = None
    missing: list[str] = field(default_factory=list)
    backend_problem: str | None = None
    exists: bool | Exception = True
    write: Exception | None = None
    asked: list[str] = field(default_factory=list)

    def redact(self, text: str) -> str:
        return text.replace("s3cret", "***")

    def ledger_version(self) -> int | None:
        return _answer(self.version)

    def source(self) -> str | None:
        return self.source_problem

    def broker(self) -> str | None:
        return self.broker_problem

    def queue_names(self) -> list[str]:
        return QUEUES

    def missing_queues(self) -> list[str]:
        self.asked.append("queues")
        return self.missing

    def result_backend(self) -> str | None:
        return self.backend_problem

    def bucket_exists(self) -> bool:
        self.asked.append("bucket")
        return _answer(self.exists)

    def write_probe(self) -> str:
        self.asked.append("write")
        if self.write is not None:
            raise self.write
        return "etl/_etl_check/probe.txt"


def _answer(value: T | Exception) -> T:
    if isinstance(value, Exception):
        raise value
    return value


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def test_every_check_is_ok_in_order_on_a_healthy_deployment() -> None:
    results = run_checks(FakeProbes(), "", "")

    assert [r.name for r in results] == ORDER
    assert all(r.ok and r.status == "ok" and r.fix == "" for r in results)
    lines = [r.line() for r in results]
    assert lines[0] == "ok      ledger         postgresql://etl@db/etl at schema version 7"
    assert lines[3] == "ok      queues         all 3 declared"
    assert lines[5] == "ok      bucket         s3://outputs/etl/ is writable"
    assert lines[6].startswith("ok      pipelines      orders_daily (built in)")


@pytest.mark.parametrize(
    ("version", "detail", "fix"),
    [
        (None, "postgresql://etl@db/etl has no ledger schema yet", FIX_MIGRATE),
        (5, "postgresql://etl@db/etl is at schema version 5, this code needs 7", FIX_MIGRATE),
        (
            9,
            "postgresql://etl@db/etl is at schema version 9, newer than this code (7)",
            "run the release that migrated it (or a newer one)",
        ),
        (
            ConnectionError("could not connect to server\nis it running?"),
            "postgresql://etl@db/etl: ConnectionError: could not connect to server",
            "check ETL_DATABASE_URL (and ETL_DATABASE_SSL*) and that PostgreSQL is up",
        ),
    ],
)
def test_the_ledger_must_be_reachable_and_at_this_codes_schema_version(
    version: int | Exception | None, detail: str, fix: str
) -> None:
    ledger = run_checks(FakeProbes(version=version), "", "")[0]

    assert (ledger.status, ledger.detail, ledger.fix) == ("failed", detail, fix)
    assert ledger.line() == f"failed  ledger         {detail}; fix: {fix}"


def test_the_missing_queues_are_named_with_how_to_declare_them() -> None:
    queues = by_name(run_checks(FakeProbes(missing=["etl.plan.dlq", "etl.plan"]), "", ""))["queues"]

    assert queues.status == "failed"
    assert queues.detail == "missing: etl.plan.dlq, etl.plan"
    assert queues.fix == FIX_QUEUES and "etl worker" in queues.fix


def test_queues_are_not_asked_for_when_the_broker_is_unreachable() -> None:
    probes = FakeProbes(broker_problem="OperationalError: [Errno 111] Connection refused")

    results = by_name(run_checks(probes, "", ""))

    assert results["broker"].status == "failed"
    assert results["broker"].detail == (
        "amqp://etl:***@mq:5672/etl: OperationalError: [Errno 111] Connection refused"
    )
    assert "ETL_BROKER_URL" in results["broker"].fix
    assert results["queues"].status == "skipped" and not results["queues"].ok
    assert results["queues"].detail == "not checked: the broker is unreachable"
    assert "queues" not in probes.asked


def test_a_missing_bucket_says_so_and_how_to_create_it() -> None:
    probes = FakeProbes(exists=False)

    bucket = by_name(run_checks(probes, "", ""))["bucket"]

    assert bucket.line() == (
        "failed  bucket         bucket s3://outputs at http://minio:9000 does not exist; "
        "fix: create it (`aws s3 mb s3://outputs --endpoint-url http://minio:9000`) "
        "or set ETL_S3_BUCKET"
    )
    assert "write" not in probes.asked


def test_a_prefix_that_cannot_be_written_names_the_permissions_it_needs() -> None:
    refused = PermissionError("AccessDenied: s3cret key may not PutObject")

    bucket = by_name(run_checks(FakeProbes(write=refused), "", ""))["bucket"]

    assert bucket.status == "failed"
    assert bucket.detail == (
        "cannot write under s3://outputs/etl/: PermissionError: AccessDenied: *** key may "
        "not PutObject"
    )
    assert "s3:PutObject and s3:DeleteObject on s3://outputs/etl/*" in bucket.fix


def test_s3_that_does_not_answer_is_not_called_a_missing_bucket() -> None:
    probes = FakeProbes(exists=TimeoutError("connect timeout"))

    bucket = by_name(run_checks(probes, "", ""))["bucket"]

    assert bucket.detail == (
        "cannot reach s3://outputs at http://minio:9000: TimeoutError: connect timeout"
    )
    assert "ETL_S3_ENDPOINT_URL" in bucket.fix


def test_problems_are_redacted_whichever_way_a_probe_reports_them() -> None:
    probes = FakeProbes(
        source_problem="OperationalError: password s3cret refused",
        version=RuntimeError("s3cret in a driver message"),
    )

    text = "\n".join(r.line() for r in run_checks(probes, "", ""))

    assert "s3cret" not in text and text.count("***") >= 2


@pytest.fixture
def module_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for pipeline modules (ETL_PIPELINE_PATH); afterwards the registry,
    sys.path and sys.modules are as they were."""
    registered, path = dict(PIPELINES), list(sys.path)
    modules = set(sys.modules)
    yield tmp_path
    PIPELINES.clear()
    PIPELINES.update(registered)
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        sys.modules.pop(name, None)


def write_module(directory: Path, source: str) -> str:
    name = f"check_pipelines_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


INVALID_PIPELINE = """
    import dataclasses
    from etl.pipelines.orders import ORDERS_DAILY

    PIPELINES = [dataclasses.replace(ORDERS_DAILY, name="checked", chunk_size=0)]
"""
GOOD_PIPELINE = """
    import dataclasses
    from etl.pipelines.orders import ORDERS_DAILY

    PIPELINES = [dataclasses.replace(ORDERS_DAILY, name="checked_ok")]
"""


def test_each_pipeline_module_is_loaded_and_the_one_that_fails_is_named(
    module_dir: Path,
) -> None:
    good = write_module(module_dir, GOOD_PIPELINE)
    invalid = write_module(module_dir, INVALID_PIPELINE)
    broken = write_module(module_dir, "PIPELINES = [undefined_name]\n")

    loaded = check_pipelines(good, str(module_dir))
    assert loaded.ok and loaded.detail == f"checked_ok, orders_daily (from {good} and built in)"

    missing = check_pipelines("no_such_pipelines_module", str(module_dir))
    assert missing.detail == (
        "module no_such_pipelines_module: ModuleNotFoundError: "
        "No module named 'no_such_pipelines_module'"
    )
    assert "ETL_PIPELINE_MODULES" in missing.fix and "ETL_PIPELINE_PATH" in missing.fix
    failing = check_pipelines(f"{good},{invalid}", str(module_dir))
    assert failing.detail == f"module {invalid}: ValueError: chunk_size must be positive"
    name_error = check_pipelines(broken, str(module_dir))
    assert name_error.detail == f"module {broken}: NameError: name 'undefined_name' is not defined"
    not_a_dir = check_pipelines(good, str(module_dir / "nowhere"))
    assert not not_a_dir.ok and "is not a directory" in not_a_dir.detail


def test_at_start_a_missing_bucket_refuses_with_how_to_create_it() -> None:
    probes = FakeProbes(exists=False)

    missing = bucket_refusal(probes)

    assert missing is not None and missing.name == "bucket"
    assert missing.sentence() == (
        "bucket s3://outputs at http://minio:9000 does not exist; fix: create it "
        "(`aws s3 mb s3://outputs --endpoint-url http://minio:9000`) or set ETL_S3_BUCKET"
    )
    assert bucket_refusal(FakeProbes()) is None
    assert "write" not in probes.asked  # nothing is written at start


@pytest.mark.parametrize(("warn", "level"), [(True, "WARNING"), (False, "INFO")])
def test_at_start_s3_that_does_not_answer_is_logged_not_fatal(
    caplog: pytest.LogCaptureFixture, warn: bool, level: str
) -> None:
    probes = FakeProbes(exists=TimeoutError("connect timeout"))

    with caplog.at_level(logging.INFO, logger="etl.service.checks"):
        assert bucket_refusal(probes, warn=warn) is None

    [record] = caplog.records
    assert record.levelname == level
    assert record.getMessage() == (
        "cannot tell whether s3://outputs exists: TimeoutError: connect timeout"
    )


# `etl check` itself: the real probes on a SQLite ledger, closed ports and moto.


@pytest.fixture
def closed_ports(monkeypatch: pytest.MonkeyPatch, services: Services) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", str(services.ledger.engine.url))
    monkeypatch.setenv("ETL_BROKER_URL", "amqp://etl:s3cret@127.0.0.1:1//")
    monkeypatch.setenv("ETL_RESULT_BACKEND", "redis://:s3cret@127.0.0.1:1/0")
    monkeypatch.setenv("ETL_S3_BUCKET", services.parts.bucket)


def test_etl_check_prints_one_line_each_and_exits_1_naming_what_is_not_ok(
    closed_ports: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--timeout", "1"]) == 1

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ORDER
    assert [line.split()[0] for line in lines] == [
        "ok", "ok", "failed", "skipped", "failed", "ok", "ok",
    ]  # fmt: skip
    assert lines[5] == "ok      bucket         s3://unit-bucket/etl/ is writable"
    assert err == "etl: error: 3 of 7 checks not ok: broker, queues, result-backend\n"
    assert "s3cret" not in out + err
    assert "amqp://etl:***@127.0.0.1:1//" in lines[2]


def test_etl_check_json_is_one_document_for_scripts(
    closed_ports: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_S3_BUCKET", "no-such-bucket")

    assert main(["check", "--json", "--timeout", "1"]) == 1

    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    checks = {check["name"]: check for check in document["checks"]}
    assert list(checks) == ORDER
    assert checks["ledger"]["ok"] is True and checks["ledger"]["status"] == "ok"
    assert checks["bucket"] == {
        "name": "bucket",
        "status": "failed",
        "detail": "bucket s3://no-such-bucket does not exist",
        "fix": "create it (`aws s3 mb s3://no-such-bucket`) or set ETL_S3_BUCKET",
        "ok": False,
    }


def test_the_s3_probes_tell_a_missing_bucket_from_one_that_exists_and_leave_nothing(
    services: Services,
) -> None:
    client, bucket = services.parts.client, services.parts.bucket

    assert bucket_exists(client, bucket) is True
    assert bucket_exists(client, "no-such-bucket") is False
    assert bucket_problem(client, bucket) is None
    # /readyz shows the part before the colon: "unavailable (NoSuchBucket)".
    assert bucket_problem(client, "no-such-bucket") == (
        "NoSuchBucket: bucket 'no-such-bucket' does not exist"
    )
    key = write_probe(client, bucket, "etl/")
    assert key.startswith("etl/_etl_check/probe-")
    assert services.parts.list_objects("etl/") == []


def test_settings_probes_hide_every_configured_password() -> None:
    probes = SettingsProbes(
        Settings(
            database_url="postgresql+psycopg2://etl:db-pass@db/etl",
            broker_url="amqp://etl:mq-pass@mq:5672/etl",
            result_backend="redis://:redis-pass@redis:6379/0",
        )
    )

    assert probes.broker_at == "amqp://etl:***@mq:5672/etl"
    assert probes.redact("db-pass, mq-pass and redis-pass") == "***, *** and ***"
