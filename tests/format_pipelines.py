"""The orders pipeline in every output format, for the e2e content check (loaded through
ETL_PIPELINE_MODULES with tests/ on PYTHONPATH)."""

from __future__ import annotations

import dataclasses

from etl.pipelines.orders import ORDERS_DAILY

ORDERS_CSV = dataclasses.replace(
    ORDERS_DAILY, name="orders_csv", output_format="csv.gz", schedule=None
)
ORDERS_PARQUET = dataclasses.replace(
    ORDERS_DAILY, name="orders_parquet", output_format="parquet", schedule=None,
    compression_level=9,
)  # fmt: skip

PIPELINES = [ORDERS_CSV, ORDERS_PARQUET]
