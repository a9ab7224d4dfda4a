"""The benchmark's pipelines, for its workers (ETL_PIPELINE_MODULES=bench.pipelines):
orders_daily in parquet, orders_daily done in SQL alone (``orders_sql``, in jsonl.gz and
parquet: a SQL-only pipeline on the COPY-to-Arrow path), and orders_daily on the row path
(``orders_rows``: its Python transform alone)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from etl.pipelines.base import Pipeline, Source
from etl.pipelines.orders import CURRENCIES, ORDERS_DAILY, STATUSES

ORDERS_PARQUET = dataclasses.replace(
    ORDERS_DAILY, name="orders_parquet", output_format="parquet", schedule=None
)


def _listed(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in sorted(values))


# transform_order in SQL, for the rows it accepts (the rows it would reject are not
# selected: a SQL-only pipeline filters in its query, and counts no rejections). LIKE and
# strpos rather than a regular expression: PostgreSQL evaluates the query once a row,
# so its cost is the pipeline's.
ORDERS_SQL_QUERY = f"""
SELECT id AS order_id,
       left(btrim(customer_email), 1) || '***@'
           || lower(split_part(btrim(customer_email), '@', 2)) AS customer_email,
       (amount * 100)::bigint AS amount_cents,
       upper(btrim(currency)) AS currency,
       CASE lower(btrim(status)) WHEN 'canceled' THEN 'cancelled'
            ELSE lower(btrim(status)) END AS status,
       created_at,
       updated_at
FROM orders
WHERE btrim(customer_email) LIKE '_%@%.%' AND btrim(customer_email) NOT LIKE '%@%@%'
  AND strpos(btrim(customer_email), ' ') = 0
  AND amount >= 0 AND amount <> 'NaN' AND amount * 100 = trunc(amount * 100)
  AND upper(btrim(currency)) IN ({_listed(CURRENCIES)})
  AND lower(btrim(status)) IN ({_listed(STATUSES)})
"""

ORDERS_SQL = Pipeline(
    name="orders_sql",
    description="orders_daily's records, made by its source query alone (SQL-only).",
    source=Source(
        query=ORDERS_SQL_QUERY,
        key_column="order_id",
        columns=tuple(name for name, _ in ORDERS_DAILY.schema),
    ),
    transform=None,
    schema=ORDERS_DAILY.schema,
    chunk_size=ORDERS_DAILY.chunk_size,
    schedule=None,
)
ORDERS_SQL_PARQUET = dataclasses.replace(
    ORDERS_SQL, name="orders_sql_parquet", output_format="parquet"
)

# orders_daily on the row path (e. in python -m bench): a plain row transform, the way a
# user's first pipeline is written.
ORDERS_ROWS = dataclasses.replace(
    ORDERS_DAILY, name="orders_rows", columnar_transform=None, schedule=None
)
ORDERS_ROWS_PARQUET = dataclasses.replace(
    ORDERS_ROWS, name="orders_rows_parquet", output_format="parquet"
)

PIPELINES = [ORDERS_PARQUET, ORDERS_SQL, ORDERS_SQL_PARQUET, ORDERS_ROWS, ORDERS_ROWS_PARQUET]
