"""Pipelines for the scheduling tests, loaded through ETL_PIPELINE_MODULES (with tests/
on PYTHONPATH) by Beat and worker subprocesses, the way a deployment adds its own.

- ticking_orders: the orders pipeline on an interval of ETL_TEST_TICK_S seconds with
  catch-up "all", so two Beats can be watched dispatching many slots in a short test;
- events_incremental: reads ``etl_test_events`` incrementally on ``updated_at`` with a
  lag of ETL_TEST_EVENTS_LAG_S seconds (one run at a time, as incremental pipelines must);
- events_by_sequence: the same table, incrementally on its id as an integer cursor.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text

from etl.domain.schedules import CatchUp, Every
from etl.domain.transform import BatchResult, Record, Row, map_rows
from etl.pipelines.base import Pipeline, Source
from etl.pipelines.orders import ORDERS_DAILY

EVENTS_TABLE = Table(
    "etl_test_events",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("payload", Text, nullable=False),
)


def _event(row: Row) -> Record:
    return {"id": row["id"], "updated_at": row["updated_at"].isoformat(), "payload": row["payload"]}


def transform_events(rows: Sequence[Row]) -> BatchResult:
    """Events pass through as they are."""
    return map_rows(rows, "id", _event)


TICKING_ORDERS = dataclasses.replace(
    ORDERS_DAILY,
    name="ticking_orders",
    schedule=Every(int(os.environ.get("ETL_TEST_TICK_S", "3"))),
    catch_up=CatchUp.ALL,
    catch_up_limit=100,
)

EVENTS_INCREMENTAL = Pipeline(
    name="events_incremental",
    description="Test events, read incrementally on updated_at.",
    source=Source(
        table="etl_test_events",
        key_column="id",
        columns=("id", "updated_at", "payload"),
        cursor_column="updated_at",
        cursor_lag_s=int(os.environ.get("ETL_TEST_EVENTS_LAG_S", "2")),
    ),
    transform=transform_events,
    schema=(("id", "integer"), ("updated_at", "timestamp"), ("payload", "string")),
    chunk_size=4,
    schedule=None,
    max_active_runs=1,
)

EVENTS_BY_SEQUENCE = dataclasses.replace(
    EVENTS_INCREMENTAL,
    name="events_by_sequence",
    description="Test events, read incrementally on their id as a sequence.",
    source=Source(
        table="etl_test_events",
        key_column="id",
        columns=("id", "updated_at", "payload"),
        cursor_column="id",
        cursor_type="integer",
    ),
)

PIPELINES = [TICKING_ORDERS, EVENTS_INCREMENTAL, EVENTS_BY_SEQUENCE]
