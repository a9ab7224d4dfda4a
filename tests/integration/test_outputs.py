"""The consumer's side on the real services: runs committed on PostgreSQL into moto's S3
server, then read, verified and corrupted through `etl outputs` in a child process that
has S3 settings only (consumers need no ledger)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from datetime import date

import pytest

from etl.bootstrap import Services, build_run_reader
from etl.config import Settings, settings_env
from etl.domain.runs import Run, RunState, Trigger
from etl.service import execution as steps

from builders import utc_day, with_orders
from support import expected_records

pytestmark = pytest.mark.integration

SOURCE_ROWS = 3_000
CHUNK_SIZE = 1_000


@pytest.fixture(scope="module")
def seeded(services: Services) -> Services:
    return with_orders(services, SOURCE_ROWS)


@pytest.fixture
def outputs_services(seeded: Services) -> Services:
    """The session's services writing under an S3 prefix of this test's own."""
    prefix = f"outputs-{uuid.uuid4().hex[:8]}"
    settings = seeded.settings.model_copy(update={"s3_prefix": prefix})
    return dataclasses.replace(seeded, settings=settings, _sources={})


def commit(services: Services, day: date) -> Run:
    """plan, every chunk, commit: a run of orders_daily, without a worker."""
    run, _ = services.ledger.create_run(
        pipeline="orders_daily",
        interval=utc_day(day),
        logical_date=day,
        trigger=Trigger.MANUAL,
        params={"chunk_size": CHUNK_SIZE},
        idempotency_key=f"outputs-{uuid.uuid4()}",
    )
    steps.plan_run(services, run.id)
    for chunk in services.ledger.get_chunks(run.id):
        steps.transform_chunk(services, run.id, chunk.index)
    committed = steps.commit_run(services, run.id)
    assert committed.state is RunState.SUCCEEDED, committed.reason
    return committed


def consumer_env(settings: Settings) -> dict[str, str]:
    """What a consumer has: the bucket and its prefix, no ledger, no broker."""
    s3 = {
        name: value for name, value in settings_env(settings).items() if name.startswith("ETL_S3_")
    }
    env = {name: value for name, value in os.environ.items() if not name.startswith("ETL_")}
    closed = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    return {**env, **s3, "ETL_DATABASE_URL": closed, "ETL_BROKER_URL": "amqp://127.0.0.1:1//"}


def etl_outputs(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", "outputs", *args],
        env=consumer_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_reader_returns_exactly_the_transformed_source(outputs_services: Services) -> None:
    commit(outputs_services, date(2021, 3, 1))
    newest = commit(outputs_services, date(2021, 3, 2))
    reader = build_run_reader(outputs_services.settings)

    latest = reader.latest("orders_daily")
    rows = list(reader.rows(latest))

    assert latest.run_id == newest.id
    expected, _ = expected_records(outputs_services, "orders_daily")
    assert sorted(rows, key=lambda row: int(str(row["order_id"]))) == expected


def test_outputs_list_and_show_latest_work_from_s3_alone(outputs_services: Services) -> None:
    older = commit(outputs_services, date(2021, 4, 1))
    newest = commit(outputs_services, date(2021, 4, 2))

    listed = etl_outputs(outputs_services.settings, "list", "orders_daily")
    shown = etl_outputs(outputs_services.settings, "show", "latest", "--pipeline", "orders_daily")

    assert listed.returncode == 0, listed.stderr
    [latest_line] = [line for line in listed.stdout.splitlines() if "(latest)" in line]
    assert newest.id in latest_line and older.id not in latest_line
    assert shown.returncode == 0, shown.stderr
    assert f"run       {newest.id}  orders_daily  dt=2021-04-02" in shown.stdout
    assert f"{newest.rows_written:,} written" in shown.stdout


def test_outputs_verify_passes_an_intact_run_and_fails_an_overwritten_part(
    outputs_services: Services,
) -> None:
    run = commit(outputs_services, date(2021, 5, 1))
    intact = etl_outputs(outputs_services.settings, "verify", run.id)
    assert intact.returncode == 0, intact.stderr
    assert f"run {run.id} verified: 3 parts" in intact.stdout

    reader = build_run_reader(outputs_services.settings)
    victim = reader.open(reader.find(run.id, ["orders_daily"])).manifest.parts[2]
    outputs_services.parts.client.put_object(
        Bucket=outputs_services.parts.bucket, Key=victim.key, Body=b"other bytes entirely"
    )

    corrupted = etl_outputs(outputs_services.settings, "verify", run.id)

    assert corrupted.returncode == 1
    [error] = corrupted.stderr.splitlines()
    assert error == (
        f"etl: error: run {run.id} failed verification: 1 of 3 parts differ from the "
        "manifest: part-00002.jsonl.gz"
    )
    assert f"BAD  {victim.key}: 20 bytes, manifest says {victim.bytes}" in corrupted.stdout
    assert f"BAD  {victim.key}: sha256 " in corrupted.stdout


def test_outputs_verify_of_a_deleted_part_names_it(outputs_services: Services) -> None:
    run = commit(outputs_services, date(2021, 6, 1))
    reader = build_run_reader(outputs_services.settings)
    victim = reader.open(reader.find(run.id, ["orders_daily"])).manifest.parts[0]
    outputs_services.parts.delete_keys([victim.key])

    missing = etl_outputs(outputs_services.settings, "verify", run.id)

    assert missing.returncode == 1
    assert f"BAD  {victim.key}: missing" in missing.stdout
    assert missing.stderr.rstrip().endswith("part-00000.jsonl.gz")
