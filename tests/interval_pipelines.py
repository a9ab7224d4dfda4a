"""Pipelines over ``etl_test_interval_events`` for the data-interval tests, loaded through
ETL_PIPELINE_MODULES (with tests/ on PYTHONPATH) by worker subprocesses:

- events_daily: partitioned by ``event_at``, one run a Berlin day;
- events_hourly: partitioned by ``event_at``, one run an hour in Berlin;
- events_by_region: a query source binding the run's interval and its ``region`` param.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, Table, Text

from etl.adapters.db import replace_table
from etl.domain.schedules import Cron
from etl.domain.transform import BatchResult, Record, Row, map_rows
from etl.pipelines.base import Pipeline, RunParams, Source

EVENTS_TABLE = Table(
    "etl_test_interval_events",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("event_at", DateTime(timezone=True), nullable=False),
    Column("region", Text, nullable=False),
)
COLUMNS = ("id", "event_at", "region")
# event_at as the source gives its text: SQLite (the unit tests' source) has no zones.
SCHEMA = (("id", "integer"), ("event_at", "string"), ("region", "string"))


def seed_events(engine: Engine, events: Iterable[tuple[int, datetime, str]]) -> int:
    """Replace the table with these (id, event_at, region) rows."""
    return replace_table(engine, EVENTS_TABLE, events)


def _event(row: Row) -> Record:
    at = row["event_at"]  # SQLite (the unit tests' source) answers with text
    return {
        "id": row["id"],
        "event_at": str(at) if isinstance(at, str) else at.isoformat(),
        "region": row["region"],
    }


def transform_events(rows: Sequence[Row]) -> BatchResult:
    """Events pass through as they are."""
    return map_rows(rows, "id", _event)


def _partitioned(name: str, schedule: Cron) -> Pipeline:
    return Pipeline(
        name=name,
        description=f"Test events, partitioned by event_at ({schedule.interval}).",
        source=Source(
            table=EVENTS_TABLE.name, key_column="id", columns=COLUMNS, time_column="event_at"
        ),
        transform=transform_events,
        schema=SCHEMA,
        chunk_size=40,
        schedule=schedule,
    )


class RegionParams(RunParams):
    """The region a run of events_by_region reads."""

    region: str = "eu"


EVENTS_DAILY = _partitioned("events_daily", Cron("0 2 * * *", "Europe/Berlin"))
EVENTS_HOURLY = _partitioned("events_hourly", Cron("5 * * * *", "Europe/Berlin", interval="hour"))
EVENTS_BY_REGION = Pipeline(
    name="events_by_region",
    description="Test events of one region and one day, read by a query with bound values.",
    source=Source(
        query=(
            f"SELECT id, event_at, region FROM {EVENTS_TABLE.name} "
            "WHERE region = :region "
            "AND event_at >= :interval_start AND event_at < :interval_end"
        ),
        key_column="id",
        columns=COLUMNS,
    ),
    transform=transform_events,
    schema=SCHEMA,
    chunk_size=40,
    schedule=Cron("0 2 * * *", "Europe/Berlin"),
    params_model=RegionParams,
)

PIPELINES = [EVENTS_DAILY, EVENTS_HOURLY, EVENTS_BY_REGION]
