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
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

from etl.domain.transform import BatchResult, Row
from etl.pipelines.orders import ORDERS_DAILY, transform_orders


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


# The faults live in the row transforms, so these pipelines have no columnar one (it
# would take the plain rows past them); the fast path's own faults are tested apart.
_ROW_PATH = {"columnar_transform": None, "schedule": None}
SLOW_ORDERS = dataclasses.replace(ORDERS_DAILY, name="slow_orders", transform=_slow, **_ROW_PATH)
POISON_ORDERS = dataclasses.replace(
    ORDERS_DAILY, name="poison_orders", transform=_poison, **_ROW_PATH
)
FLAKY_ORDERS = dataclasses.replace(ORDERS_DAILY, name="flaky_orders", transform=_flaky, **_ROW_PATH)

PIPELINES = [SLOW_ORDERS, POISON_ORDERS, FLAKY_ORDERS]
