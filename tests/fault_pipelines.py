"""Pipelines with injected faults, for the e2e fault suite.

Loaded by workers through ETL_PIPELINE_MODULES=fault_pipelines (with tests/ on
PYTHONPATH), the way a deployment adds its own pipelines. Each reads the orders table
and applies the real orders transform, plus one fault:

- slow_orders: waits ETL_TEST_SLOW_BATCH_S after transforming each batch, so a test
  can act while a chunk is mid-read (its server-side cursor still open);
- poison_orders: a permanent error (ValueError) for the batch holding ETL_TEST_POISON_KEY,
  until the test creates ETL_TEST_FAULTS_DIR/poison-fixed;
- flaky_orders: a transient error (ConnectionError) on the first ETL_TEST_FLAKY_FAILURES
  attempts at the chunk holding key 1, counted in files under ETL_TEST_FAULTS_DIR
  (shared by every worker process).

Those take the row path. Two more take the fast path (COPY's text into Arrow and the
orders' columnar transform), each table they transform counted in
ETL_TEST_FAULTS_DIR/columnar-tables so a test can check the path it ran:

- slow_orders_columnar: waits ETL_TEST_SLOW_BATCH_S after transforming each table, as
  slow_orders does after each batch;
- slow_copy_orders: reads the view SLOW_COPY_VIEW, whose COPY stalls, so a test can act
  while a worker's COPY is in flight (the fast path holds no database connection while
  it transforms: it reads the whole chunk first). The test module creates the view.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from etl.domain.transform import BatchResult, Row
from etl.pipelines.orders import ORDERS_DAILY, transform_orders, transform_orders_columnar

if TYPE_CHECKING:
    import pyarrow as pa


def _slow(rows: Sequence[Row]) -> BatchResult:
    result = transform_orders(rows)
    time.sleep(float(os.environ.get("ETL_TEST_SLOW_BATCH_S", "1.0")))
    return result


def _fixed(fault: str) -> bool:
    # A test "fixes" a fault (as a deploy would) by creating this file.
    return (Path(os.environ["ETL_TEST_FAULTS_DIR"]) / f"{fault}-fixed").exists()


def _poison(rows: Sequence[Row]) -> BatchResult:
    poison = int(os.environ.get("ETL_TEST_POISON_KEY", "1234"))
    if any(row["id"] == poison for row in rows) and not _fixed("poison"):
        raise ValueError(f"poison row {poison}: this transform can never accept it")
    return transform_orders(rows)


def _flaky(rows: Sequence[Row]) -> BatchResult:
    if any(row["id"] == 1 for row in rows):
        attempts = Path(os.environ["ETL_TEST_FAULTS_DIR"]) / "flaky-attempts"
        with attempts.open("a") as log:
            log.write("x")
        if attempts.stat().st_size <= int(os.environ.get("ETL_TEST_FLAKY_FAILURES", "2")):
            raise ConnectionError("injected transient failure (connection reset)")
    return transform_orders(rows)


COLUMNAR_TABLES = "columnar-tables"


def _columnar(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    with (Path(os.environ["ETL_TEST_FAULTS_DIR"]) / COLUMNAR_TABLES).open("a") as log:
        log.write("x")  # one byte per table: appends from several processes stay whole
    return transform_orders_columnar(table)


def _slow_columnar(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    result = _columnar(table)
    time.sleep(float(os.environ.get("ETL_TEST_SLOW_BATCH_S", "1.0")))
    return result


# The orders, except that a COPY of them (the fast path's read) waits at every 1,000th
# row; other reads (the plan's key bounds, a test's expected rows) do not.
SLOW_COPY_VIEW = "orders_slow_copy"
SLOW_COPY_VIEW_SQL = f"""
CREATE OR REPLACE VIEW {SLOW_COPY_VIEW} AS
SELECT * FROM orders
WHERE CASE WHEN id % 1000 = 500 AND current_query() LIKE 'COPY (%'
           THEN pg_sleep(0.2) IS NOT NULL ELSE true END
"""

# The faults of these three live in the row transforms, so they have no columnar one
# (it would take the plain rows past them).
_ROW_PATH = {"columnar_transform": None, "schedule": None}
SLOW_ORDERS = dataclasses.replace(ORDERS_DAILY, name="slow_orders", transform=_slow, **_ROW_PATH)
POISON_ORDERS = dataclasses.replace(
    ORDERS_DAILY, name="poison_orders", transform=_poison, **_ROW_PATH
)
FLAKY_ORDERS = dataclasses.replace(ORDERS_DAILY, name="flaky_orders", transform=_flaky, **_ROW_PATH)
# The row transform stays the plain orders one: the fast path hands it the rows the
# columnar transform is not sure of.
SLOW_ORDERS_COLUMNAR = dataclasses.replace(
    ORDERS_DAILY, name="slow_orders_columnar", columnar_transform=_slow_columnar, schedule=None
)
SLOW_COPY_ORDERS = dataclasses.replace(
    ORDERS_DAILY,
    name="slow_copy_orders",
    source=dataclasses.replace(ORDERS_DAILY.source, table=SLOW_COPY_VIEW),
    columnar_transform=_columnar,
    schedule=None,
)

PIPELINES = [SLOW_ORDERS, POISON_ORDERS, FLAKY_ORDERS, SLOW_ORDERS_COLUMNAR, SLOW_COPY_ORDERS]
