"""``python -m bench --profile``: where one chunk's time goes, stage by stage, on the
columnar path, the SQL-only path and the row path (whatever ``SqlSource.read_range``
does at the time)."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.pipelines import ORDERS_SQL
from etl.adapters.db import SqlSource, make_engine
from etl.config import Settings
from etl.formats.columnar import sql_table, transform_table
from etl.formats.encoding import make_writer
from etl.pipelines.orders import ORDERS_DAILY

FORMATS = ("jsonl.gz", "parquet")


def _print_profile(title: str, rows: int, spent: dict[str, float]) -> None:
    total = sum(spent.values())
    print(f"{title}, one chunk of {rows:,} rows: {total:.3f} s")
    for stage, seconds in spent.items():
        print(
            f"  {stage:40} {seconds:7.3f} s  {seconds / total:5.1%}  "
            f"{seconds / rows * 1e6:6.2f} us/row"
        )


def profile_chunk(settings: Settings, chunk_size: int) -> None:
    """Where one chunk's time goes, stage by stage: on the fast path (columnar transform)
    and the SQL-only path for each format, and on the row path for jsonl.gz."""
    engine = make_engine(settings.database_url)
    source = SqlSource(engine, ORDERS_DAILY.source)
    sql_source = SqlSource(engine, ORDERS_SQL.source)
    schema = ORDERS_DAILY.record_schema
    columnar = ORDERS_DAILY.columnar_transform
    assert columnar is not None
    # The first pass warms the process (imports, the connection pool) and is not shown.
    for attempt, output_format in enumerate(["jsonl.gz", *FORMATS]):
        spent = dict.fromkeys(
            ["COPY to a file, CSV into Arrow", "columnar transform",
             "row transform (the rest), schema check", "encode and compress"],
            0.0,
        )  # fmt: skip

        def timed_columnar(batch: Any, spent: Any = spent) -> Any:
            began = time.perf_counter()
            try:
                return columnar(batch)
            finally:
                spent["columnar transform"] += time.perf_counter() - began

        rows = 0
        with tempfile.TemporaryFile() as spool:
            writer = make_writer(output_format, spool, schema)
            batches = source.read_range_text(1, 1 + chunk_size)
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                spent["COPY to a file, CSV into Arrow"] += time.perf_counter() - began
                if batch is None:
                    break
                began = time.perf_counter()
                before = spent["columnar transform"]
                records, _ = transform_table(
                    batch, timed_columnar, ORDERS_DAILY.row_transform, schema
                )
                spent["row transform (the rest), schema check"] += (
                    time.perf_counter() - began - (spent["columnar transform"] - before)
                )
                began = time.perf_counter()
                writer.write_table(records)
                spent["encode and compress"] += time.perf_counter() - began
                rows += batch.num_rows
            began = time.perf_counter()
            writer.close()
            spent["encode and compress"] += time.perf_counter() - began

        sql_spent = dict.fromkeys(
            ["COPY to a file, CSV into Arrow", "cast to the schema (sql_table)",
             "encode and compress"],
            0.0,
        )  # fmt: skip
        sql_rows = 0
        with tempfile.TemporaryFile() as spool:
            writer = make_writer(output_format, spool, ORDERS_SQL.record_schema)
            batches = sql_source.read_range_text(1, 1 + chunk_size)
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                sql_spent["COPY to a file, CSV into Arrow"] += time.perf_counter() - began
                if batch is None:
                    break
                began = time.perf_counter()
                records = sql_table(batch, ORDERS_SQL.record_schema)
                sql_spent["cast to the schema (sql_table)"] += time.perf_counter() - began
                began = time.perf_counter()
                writer.write_table(records)
                sql_spent["encode and compress"] += time.perf_counter() - began
                sql_rows += batch.num_rows
            began = time.perf_counter()
            writer.close()
            sql_spent["encode and compress"] += time.perf_counter() - began

        if attempt == 0:
            continue
        _print_profile(f"fast path (columnar transform) to {output_format}", rows, spent)
        _print_profile(f"SQL-only (orders_sql) to {output_format}", sql_rows, sql_spent)

    row_spent = dict.fromkeys(
        ["read_range (rows as dicts)", "row transform", "schema check (Schema.conform)",
         "encode and compress"],
        0.0,
    )  # fmt: skip
    row_rows = 0
    with tempfile.TemporaryFile() as spool:
        writer = make_writer("jsonl.gz", spool, schema)
        batches = source.read_range(1, 1 + chunk_size, 5000)
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            row_spent["read_range (rows as dicts)"] += time.perf_counter() - began
            if batch is None:
                break
            began = time.perf_counter()
            result = ORDERS_DAILY.row_transform(batch)
            row_spent["row transform"] += time.perf_counter() - began
            began = time.perf_counter()
            schema.conform(result.records)  # measured alone; the writer checks them again
            checked = time.perf_counter() - began
            row_spent["schema check (Schema.conform)"] += checked
            began = time.perf_counter()
            writer.write_records(result.records)
            row_spent["encode and compress"] += time.perf_counter() - began - checked
            row_rows += len(batch)
        began = time.perf_counter()
        writer.close()
        row_spent["encode and compress"] += time.perf_counter() - began
    _print_profile("row path (orders_daily without its columnar transform) to jsonl.gz",
                   row_rows, row_spent)  # fmt: skip
    engine.dispose()
