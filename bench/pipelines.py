"""The orders pipeline in parquet, for the benchmark's workers (ETL_PIPELINE_MODULES)."""

from __future__ import annotations

import dataclasses

from etl.pipelines.orders import ORDERS_DAILY

ORDERS_PARQUET = dataclasses.replace(
    ORDERS_DAILY, name="orders_parquet", output_format="parquet", schedule=None
)

PIPELINES = [ORDERS_PARQUET]
