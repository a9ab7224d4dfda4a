"""Typed records on PostgreSQL (issue 15): a SQL-only pipeline writes, through COPY and
Arrow with no row transform, the records the equivalent Python transform writes, in
every format; orders_daily done in SQL alone (the benchmark's ``orders_sql``) writes
orders_daily's records; and on a real worker a record that does not match the schema
fails its chunk at once (a permanent error, not retried), the reason naming the field."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    MetaData,
    Numeric,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services
from etl.domain.runs import ChunkState, Run, RunState
from etl.domain.transform import BatchResult, Row
from etl.formats.encoding import read_part
from etl.pipelines import PIPELINES, base
from etl.pipelines.base import Pipeline, Source
from etl.pipelines.orders import ORDERS_DAILY
from etl.service import execution as steps
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import EtlCelery, celery_enqueue

from builders import new_run

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BERLIN = timezone(timedelta(hours=2))

TYPED_TABLE = Table(
    "etl_test_typed",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("ratio", Float),
    Column("amount", Numeric(12, 2)),
    Column("ref", Uuid),
    Column("flag", Boolean),
    Column("day", Date),
    Column("at", DateTime(timezone=True)),
    Column("local_at", DateTime(timezone=False)),
    Column("payload", JSONB),
    Column("note", Text),
)
SCHEMA = (
    ("id", "integer"),
    ("ratio", "float"),
    ("amount", "decimal(12,2)"),
    ("doubled", "decimal(13,2)"),
    ("ref", "string"),
    ("flag", "boolean"),
    ("day", "date"),
    ("at", "timestamp"),
    ("local_at", "timestamp_ntz"),
    ("payload", "json"),
    ("note", "string"),
    ("shout", "string"),
)
COLUMNS = tuple(name for name, _ in SCHEMA)


def typed_rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows with every type, nulls, and the values a careless encoder gets wrong."""
    notes = ["plain", 'quo"te, comma', "new\nline", "é ✓ 中文", "", "back\\slash", None]
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    for n in range(1, count + 1):
        yield {
            "id": n,
            "ratio": [0.1, -1e300, 2.5e-7, -0.0, None][n % 5],
            "amount": None if n % 11 == 0 else Decimal(n * 37 % 100_000) / 100 - 50,
            "ref": UUID(int=n * 7919),
            "flag": [True, False, None][n % 3],
            "day": date(1969, 7, 20) + timedelta(days=n * 13),
            "at": None
            if n % 13 == 0
            else start + timedelta(seconds=n * 977, microseconds=n % 3 * 250_000),
            "local_at": datetime(2026, 3, 29, 2, 30) + timedelta(minutes=n),
            "payload": None
            if n % 17 == 0
            else {"z": n, "a": [n, "é", None], "nested": {"b": True}},
            "note": notes[n % len(notes)],
        }


def passing_through(rows: Sequence[Row]) -> BatchResult:
    """The Python transform: the driver's values as they are (datetime, Decimal, UUID,
    date, dict), and two computed columns."""
    return BatchResult(
        records=[
            {
                **{name: row[name] for name in COLUMNS if name not in ("doubled", "shout")},
                "doubled": None if row["amount"] is None else row["amount"] * 2,
                "shout": (row["note"] or "") + "!",
            }
            for row in rows
        ]
    )


SOURCE_COLUMNS = tuple(column.name for column in TYPED_TABLE.columns)
PYTHON_TYPED = Pipeline(
    name="typed_python",
    description="The typed table through a Python transform.",
    source=Source(table=TYPED_TABLE.name, key_column="id", columns=SOURCE_COLUMNS),
    transform=passing_through,
    schema=SCHEMA,
    chunk_size=100,
    schedule=None,
)
SQL_TYPED = Pipeline(
    name="typed_sql",
    description="The same records, made by the query alone.",
    source=Source(
        query=(
            "SELECT id, ratio, amount, amount * 2 AS doubled, ref, flag, day, at, local_at, "
            f"payload, note, coalesce(note, '') || '!' AS shout FROM {TYPED_TABLE.name}"
        ),
        key_column="id",
        columns=COLUMNS,
    ),
    transform=None,
    schema=SCHEMA,
    chunk_size=100,
    schedule=None,
)


@pytest.fixture
def typed_table(services: Services) -> Services:
    TYPED_TABLE.drop(services.source_engine, checkfirst=True)
    TYPED_TABLE.create(services.source_engine)
    with services.source_engine.begin() as conn:
        conn.execute(TYPED_TABLE.insert(), list(typed_rows(450)))
    return services


def run_through_the_steps(services: Services, pipeline: Pipeline, chunk_size: int) -> Run:
    run_id = new_run(services.ledger, pipeline=pipeline.name, params={"chunk_size": chunk_size})
    for chunk in steps.plan_run(services, run_id) or []:
        steps.transform_chunk(services, run_id, chunk.index)
    return steps.commit_run(services, run_id)


def records_of(services: Services, run: Run) -> list[dict[str, Any]]:
    """Every record of a committed run, read back through its manifest."""
    assert run.state is RunState.SUCCEEDED, run.reason
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    schema = [(field["name"], field["type"]) for field in manifest["schema"]]
    return [
        record
        for part in manifest["parts"]
        for record in read_part(services.parts.get_bytes(part["key"]), manifest["format"], schema)
    ]


@pytest.fixture
def copy_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows each SQL-only batch carried from COPY to the part; and no row transform may
    be made for a SQL-only pipeline (the fallback where there is no COPY)."""
    carried: list[int] = []
    real = steps.sql_table

    def counted(table: Any, schema: Any) -> Any:
        carried.append(table.num_rows)
        return real(table, schema)

    def no_row_transform(*args: Any) -> Any:
        raise AssertionError("a row transform was made for a SQL-only pipeline on PostgreSQL")

    monkeypatch.setattr(steps, "sql_table", counted)
    monkeypatch.setattr(base, "sql_only_transform", no_row_transform)
    return carried


@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz", "parquet"])
def test_a_sql_only_pipeline_writes_the_records_of_the_python_transform_through_copy(
    typed_table: Services,
    monkeypatch: pytest.MonkeyPatch,
    copy_spy: list[int],
    output_format: str,
) -> None:
    python = dataclasses.replace(PYTHON_TYPED, output_format=output_format)
    sql = dataclasses.replace(SQL_TYPED, output_format=output_format)
    for pipeline in (python, sql):
        monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)

    by_python = records_of(typed_table, run_through_the_steps(typed_table, python, 100))
    assert copy_spy == []  # the Python pipeline has no columnar transform: the row path
    by_sql = records_of(typed_table, run_through_the_steps(typed_table, sql, 100))

    assert len(by_sql) == len(by_python) == 450
    assert by_sql == by_python
    assert sum(copy_spy) == 450 and len(copy_spy) >= 5  # every row came through COPY
    first = by_sql[0]
    assert first["at"] == "2026-03-29T00:46:17.250000Z"
    assert first["amount"] == "-49.63" and first["doubled"] == "-99.26"
    assert first["ref"] == str(UUID(int=7919))
    assert first["payload"] == {"a": [1, "é", None], "nested": {"b": True}, "z": 1}
    assert first["local_at"] == "2026-03-29T02:31:00"


def _bench_pipelines() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_pipelines", PROJECT_ROOT / "bench" / "pipelines.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_orders_done_in_sql_alone_writes_orders_dailys_records(
    services: Services, monkeypatch: pytest.MonkeyPatch, copy_spy: list[int]
) -> None:
    orders_sql: Pipeline = _bench_pipelines().ORDERS_SQL
    monkeypatch.setitem(PIPELINES, orders_sql.name, orders_sql)
    seed_orders(services.source_engine, 5_000)

    daily = run_through_the_steps(services, ORDERS_DAILY, 1_000)
    by_sql = run_through_the_steps(services, orders_sql, 1_000)

    assert records_of(services, by_sql) == records_of(services, daily)
    assert by_sql.rows_written == daily.rows_written == 5_000 - (daily.rows_rejected or 0)
    assert (daily.rows_rejected or 0) > 50 and by_sql.rows_rejected == 0  # filtered in SQL
    assert sum(copy_spy) == by_sql.rows_written


# -- on a real worker -------------------------------------------------------------------------


def _typed_order(row: Row) -> dict[str, Any]:
    return {
        "order_id": row["id"],
        "amount": row["amount"],  # a Decimal from the driver
        "at": row["created_at"].astimezone(BERLIN),  # an aware datetime
    }


def with_an_extra_key(rows: Sequence[Row]) -> BatchResult:
    return BatchResult(records=[_typed_order(row) | {"debug": row["status"]} for row in rows])


def with_a_missing_key(rows: Sequence[Row]) -> BatchResult:
    return BatchResult(records=[{"order_id": row["id"], "amount": row["amount"]} for row in rows])


def with_a_wrong_type(rows: Sequence[Row]) -> BatchResult:
    return BatchResult(
        records=[_typed_order(row) | {"at": row["created_at"].date()} for row in rows]
    )


@pytest.mark.parametrize(
    ("transform", "reason"),
    [
        (with_an_extra_key, "field 'debug' is not in the schema"),
        (with_a_missing_key, "field 'at' (timestamp) is missing from a record"),
        (
            with_a_wrong_type,
            "field 'at' (timestamp) got a date: a timestamp takes an aware datetime",
        ),
    ],
    ids=["an extra key", "a missing key", "a wrong type"],
)
def test_on_a_worker_a_record_that_does_not_match_fails_its_chunk_at_once_naming_the_field(
    celery_app: EtlCelery,
    worker: Any,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    transform: Any,
    reason: str,
) -> None:
    pipeline = dataclasses.replace(
        ORDERS_DAILY,
        name="mismatched_orders",
        transform=transform,
        columnar_transform=None,
        schema=(("order_id", "integer"), ("amount", "decimal(14,3)"), ("at", "timestamp")),
        schedule=None,
    )
    monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)
    seed_orders(services.source_engine, 1_000)
    run, _ = RunService(services.ledger, celery_enqueue(celery_app)).start_run(
        pipeline.name, interval=date(2026, 11, 4), params={"chunk_size": 1_000}
    )

    final = wait_for_run(services.ledger, run.id, timeout_s=60)

    assert final.state is RunState.FAILED
    assert final.reason is not None
    assert final.reason.startswith("chunk 0 failed: SchemaMismatch: pipeline mismatched_orders: ")
    assert reason in final.reason and "e.g. " in final.reason
    chunk = services.ledger.get_chunk(run.id, 0)
    assert chunk.state is ChunkState.FAILED
    assert chunk.attempts == 1  # a bug in the transform: permanent, never retried
