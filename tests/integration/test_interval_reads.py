"""What a run reads of its source on PostgreSQL: a partitioned source only its interval,
bounded in the SQL itself; a query source its interval and params, always bound; and a
version 6 ledger migrated to runs by interval."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from interval_pipelines import COLUMNS, EVENTS_BY_REGION, EVENTS_DAILY, EVENTS_TABLE, seed_events
from sqlalchemy import Engine, event, inspect, text

from etl.adapters.db import SqlSource
from etl.adapters.ledger import upgrade
from etl.adapters.ledger.schema import SCHEMA_VERSION
from etl.bootstrap import Services
from etl.domain.intervals import DataInterval
from etl.domain.runs import Trigger
from etl.domain.windows import ReadScope
from etl.pipelines.base import Source

from builders import new_run
from support import scratch_ledger

pytestmark = pytest.mark.integration

DAY = DataInterval(datetime(2026, 11, 22, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))


@pytest.fixture
def events(services: Services) -> Iterator[Engine]:
    """Events every 30 minutes over three days, in two regions; the middle day is DAY."""
    first = DAY.start - timedelta(days=1)
    seed_events(
        services.source_engine,
        (
            (i + 1, first + timedelta(minutes=30 * i), "eu" if i % 2 else "us")
            for i in range(3 * 48)
        ),
    )
    yield services.source_engine


def captured_sql(engine: Engine) -> tuple[list[tuple[str, Any]], Any]:
    """Every statement the engine sends, with its parameters, while the listener is on."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    return seen, record


def read_all(source: SqlSource, scope: ReadScope) -> list[dict[str, Any]]:
    span = source.key_span(scope)
    assert span.key_min is not None and span.key_max is not None
    return [
        row
        for batch in source.read_range(
            span.key_min, span.key_max, 1000, scope, key_hi_inclusive=True
        )
        for row in batch
    ]


def test_a_partitioned_source_reads_its_interval_and_the_sql_says_so(events: Engine) -> None:
    source = SqlSource(events, EVENTS_DAILY.source)
    scope = ReadScope(DAY, date(2026, 11, 22), time_column="event_at")
    seen, listener = captured_sql(events)
    try:
        rows = read_all(source, scope)
    finally:
        event.remove(events, "before_cursor_execute", listener)

    assert len(rows) == 48
    assert all(DAY.start <= row["event_at"] < DAY.end for row in rows)
    assert [row["id"] for row in rows] == list(range(49, 97))
    # The plan's count carries the interval's bounds, as values (the chunk's read goes
    # through psycopg2's own cursor, unseen by SQLAlchemy's events: its rows say it).
    for statement, parameters in seen:
        assert "event_at >= %(etl_interval_start)s" in statement
        assert "event_at < %(etl_interval_end)s" in statement
        assert (parameters["etl_interval_start"], parameters["etl_interval_end"]) == (
            DAY.start,
            DAY.end,
        )
    assert len(seen) == 1


def test_a_query_source_binds_the_interval_and_the_runs_params(events: Engine) -> None:
    source = SqlSource(events, EVENTS_BY_REGION.source)
    scope = ReadScope(DAY, date(2026, 11, 22), params={"region": "eu", "chunk_size": 40})

    rows = read_all(source, scope)

    assert len(rows) == 24
    assert {row["region"] for row in rows} == {"eu"}
    assert all(DAY.start <= row["event_at"] < DAY.end for row in rows)


def test_a_param_that_tries_to_inject_sql_is_only_ever_a_value(events: Engine) -> None:
    source = SqlSource(events, EVENTS_BY_REGION.source)
    hostile = "eu' OR '1'='1'; DROP TABLE etl_test_interval_events; --"
    scope = ReadScope(DAY, date(2026, 11, 22), params={"region": hostile})

    assert source.key_span(scope).rows == 0
    assert list(source.read_range_text(1, 10_000, scope, key_hi_inclusive=True)) == []
    with events.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {EVENTS_TABLE.name}")).scalar_one()
    assert count == 3 * 48


def test_the_copy_path_binds_a_query_with_a_literal_percent_and_a_cast(events: Engine) -> None:
    source = SqlSource(
        events,
        Source(
            query=(
                f"SELECT id, event_at, region FROM {EVENTS_TABLE.name} "
                "WHERE region LIKE 'e%' AND id::text LIKE '%2' "
                "AND event_at >= :interval_start AND event_at < :interval_end"
            ),
            key_column="id",
            columns=COLUMNS,
        ),
    )
    scope = ReadScope(DAY, date(2026, 11, 22))

    tables = list(source.read_range_text(1, 10_000, scope, key_hi_inclusive=True))

    ids = [value for table in tables for value in table.column("id").to_pylist()]
    assert ids == [52, 62, 72, 82, 92]  # the day's "eu" events (even ids) ending in 2


def test_a_version_6_ledger_on_postgres_gives_each_run_its_utc_day(postgres_url: str) -> None:
    with scratch_ledger(postgres_url) as (engine, ledger):
        run_id = new_run(ledger, trigger=Trigger.SCHEDULE, day=date(2026, 5, 1))
        with engine.begin() as conn:  # back to version 6: no interval, unique by date
            conn.execute(
                text("ALTER TABLE etl_runs DROP COLUMN interval_start, DROP COLUMN interval_end")
            )
            conn.execute(
                text(
                    "CREATE UNIQUE INDEX uq_etl_runs_scheduled_date ON etl_runs "
                    "(pipeline, logical_date) WHERE trigger = 'schedule'"
                )
            )
            conn.execute(
                text(
                    "ALTER TABLE etl_watermarks DROP COLUMN position, "
                    "ALTER COLUMN value SET NOT NULL"
                )
            )
            conn.execute(text("DELETE FROM etl_schema_version WHERE version > 6"))

        assert upgrade(engine) == SCHEMA_VERSION

        run = ledger.get_run(run_id)
        assert run.interval == DataInterval(
            datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)
        )
        watermark_columns = {c["name"]: c for c in inspect(engine).get_columns("etl_watermarks")}
        assert "position" in watermark_columns and watermark_columns["value"]["nullable"]
        indexes = {index["name"] for index in inspect(engine).get_indexes("etl_runs")}
        assert "uq_etl_runs_scheduled_interval" in indexes
        assert "uq_etl_runs_scheduled_date" not in indexes
