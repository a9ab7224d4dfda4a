"""``etl check`` and the start-up refusals on the real services (issue 15): every line ok
on the session's services; a missing queue, an unmigrated ledger and an unloadable
pipeline module each named with its fix; and with the bucket missing, ``etl check``,
``etl worker``, ``etl api``, ``etl run`` and ``/readyz`` each say so in one line while
no run is recorded, sent or dead-lettered."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text

from api import create_app
from etl.adapters.ledger import SCHEMA_VERSION
from etl.adapters.probe import SettingsProbes
from etl.adapters.topology import all_queues, declare_topology
from etl.bootstrap import Services
from etl.config import Settings
from etl.service.checks import check_ledger

from support import (
    POSTGRES_ADMIN_URL,
    RABBITMQ_URL,
    SESSION_TAG,
    free_ports,
    rabbitmqctl,
    run_etl,
    scratch_database,
    scratch_ledger,
    scratch_vhost,
)

pytestmark = pytest.mark.e2e

CHECKS = ["ledger", "source", "broker", "queues", "result-backend", "bucket", "pipelines"]


@pytest.fixture(scope="module")
def deployed(service_settings: Settings, services: Services) -> Settings:
    """The session's services as a deployment has them: ledger migrated, bucket made
    (the ``services`` fixture), queues declared."""
    declare_topology(service_settings.broker_url)
    return service_settings


def lines(completed: subprocess.CompletedProcess[str]) -> list[str]:
    return completed.stdout.splitlines()


def the_line(completed: subprocess.CompletedProcess[str], name: str) -> str:
    [line] = [line for line in lines(completed) if line.split()[1] == name]
    return line


def one_error_line(completed: subprocess.CompletedProcess[str]) -> str:
    """The one line a refusal prints on stderr."""
    err = completed.stderr.strip().splitlines()
    assert len(err) == 1, completed.stdout + completed.stderr
    return err[0]


def test_etl_check_is_all_ok_on_the_sessions_services(
    deployed: Settings, services: Services
) -> None:
    completed = run_etl(deployed, "check")

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr == ""
    assert [line.split()[:2] for line in lines(completed)] == [["ok", name] for name in CHECKS]
    assert the_line(completed, "queues").endswith(f"all {len(all_queues())} declared")
    prefix = f"s3://{deployed.s3_bucket}/{deployed.s3_prefix}/"
    assert the_line(completed, "bucket").endswith(f"{prefix} is writable")
    # The probe object was deleted again.
    assert services.parts.list_objects(f"{deployed.s3_prefix}/_etl_check/") == []


def test_etl_check_names_a_missing_queue_and_how_to_declare_it(deployed: Settings) -> None:
    with scratch_vhost(f"etl-check-{SESSION_TAG}-{uuid.uuid4().hex[:6]}") as vhost:
        url = f"{RABBITMQ_URL}/{vhost}"
        declare_topology(url)
        rabbitmqctl("delete_queue", "-p", vhost, "etl.commit.dlq")

        completed = run_etl(deployed.model_copy(update={"broker_url": url}), "check")

    assert completed.returncode == 1
    assert the_line(completed, "queues") == (
        "failed  queues         missing: etl.commit.dlq; fix: start `etl worker` once (it "
        "declares them), or load infra/rabbitmq/definitions.json into the broker"
    )
    assert one_error_line(completed) == "etl: error: 1 of 7 checks not ok: queues"


def test_etl_check_names_an_unmigrated_ledger_and_migrates_nothing(
    deployed: Settings,
) -> None:
    name = f"etl_check_{uuid.uuid4().hex[:8]}"
    with scratch_database(POSTGRES_ADMIN_URL, name) as empty_url:
        completed = run_etl(deployed.model_copy(update={"database_url": empty_url}), "check")
        still_empty = _has_table(empty_url, "etl_schema_version")

    assert completed.returncode == 1
    ledger = the_line(completed, "ledger")
    assert ledger.startswith("failed  ledger         postgresql+psycopg2://postgres@")
    assert ledger.endswith(f"/{name} has no ledger schema yet; fix: run `etl db upgrade`")
    assert still_empty is False


def test_etl_check_names_a_ledger_a_version_behind(deployed: Settings) -> None:
    with scratch_ledger(deployed.database_url) as (engine, _):
        with engine.begin() as conn:
            conn.execute(text("UPDATE etl_schema_version SET version = 6"))
        url = engine.url.render_as_string(hide_password=False)

        result = check_ledger(SettingsProbes(deployed.model_copy(update={"database_url": url})))

    assert result.status == "failed"
    assert result.detail.endswith(f"is at schema version 6, this code needs {SCHEMA_VERSION}")
    assert result.fix == "run `etl db upgrade`"


def _has_table(url: str, table: str) -> bool:
    engine = create_engine(url)
    try:
        return inspect(engine).has_table(table)
    finally:
        engine.dispose()


MISSING_MODULE = "no_such_pipelines_module"
MODULE_PROBLEM = (
    f"module {MISSING_MODULE}: ModuleNotFoundError: No module named '{MISSING_MODULE}'; "
    "fix: fix the module, or ETL_PIPELINE_MODULES and ETL_PIPELINE_PATH (where it is found)"
)


def test_an_unloadable_pipeline_module_is_named_by_check_and_stops_every_process(
    deployed: Settings,
) -> None:
    broken = deployed.model_copy(update={"pipeline_modules": MISSING_MODULE})
    [port] = free_ports(1)

    check = run_etl(broken, "check")
    assert check.returncode == 1
    assert the_line(check, "pipelines") == f"failed  pipelines      {MODULE_PROBLEM}"

    refusals = {
        "the worker": run_etl(broken, "worker", timeout_s=60),
        "the API": run_etl(broken, "api", "--bind", f"127.0.0.1:{port}", timeout_s=60),
    }
    for process, completed in refusals.items():
        assert completed.returncode == 2, completed.stdout + completed.stderr
        assert one_error_line(completed) == f"etl: error: not starting {process}: {MODULE_PROBLEM}"
    beat = run_etl(broken, "beat", timeout_s=60)
    assert beat.returncode == 2, beat.stdout + beat.stderr
    assert one_error_line(beat) == f"etl beat: error: not starting Beat: {MODULE_PROBLEM}"


@pytest.fixture
def missing_bucket(deployed: Settings, services: Services) -> Iterator[Settings]:
    """The session's services with a bucket that does not exist; afterwards, nothing
    was recorded, sent or dead-lettered."""
    settings = deployed.model_copy(update={"s3_bucket": f"etl-missing-{SESSION_TAG}"})
    vhost = deployed.broker_url.rsplit("/", 1)[1]
    before = _counts(services), _depths(vhost)
    yield settings
    assert (_counts(services), _depths(vhost)) == before


def _depths(vhost: str) -> dict[str, int]:
    """How many messages each queue of the vhost holds (one rabbitmqctl call)."""
    listed = rabbitmqctl("list_queues", "-p", vhost, "name", "messages").splitlines()
    rows = (line.partition("\t") for line in listed)
    depths = {name: int(count) for name, _, count in rows if count.isdigit()}  # no header
    assert {queue.name for queue in all_queues()} <= set(depths)
    return depths


def _counts(services: Services) -> dict[str, int]:
    with services.ledger.engine.connect() as conn:
        return {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("etl_runs", "etl_chunks", "etl_dead_letters")
        }


def test_with_the_bucket_missing_each_entry_point_says_so_in_one_line_and_nothing_runs(
    missing_bucket: Settings, s3_endpoint: str
) -> None:
    bucket = missing_bucket.s3_bucket
    problem = (
        f"bucket s3://{bucket} at {s3_endpoint} does not exist; fix: create it "
        f"(`aws s3 mb s3://{bucket} --endpoint-url {s3_endpoint}`) or set ETL_S3_BUCKET"
    )
    [port] = free_ports(1)

    check = run_etl(missing_bucket, "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert [line for line in lines(check) if not line.startswith("ok ")] == [
        f"failed  bucket         {problem}"
    ]
    assert one_error_line(check) == "etl: error: 1 of 7 checks not ok: bucket"

    worker = run_etl(missing_bucket, "worker", timeout_s=60)
    assert worker.returncode == 1, worker.stdout + worker.stderr
    assert one_error_line(worker) == f"etl: error: not starting the worker: {problem}"

    api = run_etl(missing_bucket, "api", "--bind", f"127.0.0.1:{port}", timeout_s=60)
    assert api.returncode == 1, api.stdout + api.stderr
    assert one_error_line(api) == f"etl: error: not starting the API: {problem}"

    run = run_etl(missing_bucket, "run", "orders_daily", "--date", "2026-10-01")
    assert run.returncode == 1, run.stdout + run.stderr
    assert one_error_line(run) == f"etl: error: no run started: {problem}"
    assert run.stdout == ""

    app = create_app(missing_bucket)
    try:
        response = app.test_client().get("/readyz")
    finally:
        app.extensions["etl"].ledger.engine.dispose()
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "not ready",
        "checks": {"broker": "ok", "database": "ok", "bucket": "unavailable (NoSuchBucket)"},
    }
