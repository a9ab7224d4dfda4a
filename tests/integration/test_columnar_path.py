"""The columnar fast path against the row path, on the real PostgreSQL: the same
records in the same order, the same rejections, and the same part bytes.

The source mixes the sample orders with the rows a fast path gets wrong first: text
that needs escaping, non-ASCII case, NULLs and the text 'NULL', amounts the plain
pattern does not take, fractional and pre-1970 timestamps, a timestamp without a zone.
"""

from __future__ import annotations

import gzip
import io
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from etl.adapters.db import SqlSource, replace_table
from etl.adapters.errors import is_transient
from etl.adapters.sample_orders import ORDERS_TABLE, sample_orders
from etl.bootstrap import Services
from etl.domain.windows import CursorWindow, ReadScope
from etl.formats.columnar import plain_records, transform_table
from etl.formats.encoding import make_writer, read_part
from etl.pipelines.orders import ORDERS_DAILY, transform_orders, transform_orders_columnar

from builders import as_read, utc_day

pytestmark = pytest.mark.integration

MOMENT = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
BERLIN = timezone(timedelta(hours=2))
INSERTED = ("id", "email", "amount", "currency", "status", "moment")


def awkward_orders(first_id: int) -> list[tuple[Any, ...]]:
    """Rows each of which a careless fast path would turn into a different record."""
    rows: list[tuple[Any, ...]] = [
        ("Jöhn@Exämple.COM", "10.00", "usd", "paid", MOMENT),  # non-ASCII case
        ('quo"te@example.com', "1.50", "EUR", "paid", MOMENT),  # needs JSON escaping
        ("back\\slash@example.com", "1.50", "EUR", "paid", MOMENT),
        ("new\nline@example.com", "1.50", "EUR", "paid", MOMENT),  # a newline inside CSV
        ("tab@exa\tmple.com", "1.50", "EUR", "paid", MOMENT),
        ("a,b@example.com", "1.50", "EUR", "paid", MOMENT),  # a comma inside CSV
        (None, "1.50", "EUR", "paid", MOMENT),
        ("NULL", "1.50", "EUR", "paid", MOMENT),
        ("", "1.50", "EUR", "paid", MOMENT),
        ("x@example.com", None, "EUR", "paid", MOMENT),
        ("x@example.com", "12.3", "EUR", "paid", MOMENT),  # one decimal: still whole cents
        ("x@example.com", "0012.340", "EUR", "paid", MOMENT),
        ("x@example.com", "12.345", "EUR", "paid", MOMENT),
        ("x@example.com", "-0.00", "EUR", "paid", MOMENT),
        ("x@example.com", "NaN", "EUR", "paid", MOMENT),
        ("x@example.com", "99999999999.990", "EUR", "paid", MOMENT),
        ("x@example.com", "1.00", "\u00a0EUR", "paid", MOMENT),  # a no-break space
        ("x@example.com", "1.00", None, "paid", MOMENT),
        ("x@example.com", "1.00", "EUR", " Canceled ", MOMENT),
        ("x@example.com", "1.00", "EUR", "pa\nid", MOMENT),
        ("x@example.com", "1.00", "EUR", None, MOMENT),
        ("x@example.com", "1.00", "EUR", "paid", MOMENT.replace(microsecond=500_000)),
        ("x@example.com", "1.00", "EUR", "paid", MOMENT.replace(microsecond=7)),
        ("x@example.com", "1.00", "EUR", "paid", datetime(1969, 7, 20, 20, 17, tzinfo=UTC)),
        ("x@example.com", "1.00", "EUR", "paid", MOMENT.astimezone(BERLIN)),
    ]
    return [
        (first_id + offset, email, None if amount is None else Decimal(amount), *rest, moment)
        for offset, (email, amount, *rest, moment) in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def orders_source(services: Services) -> Iterator[SqlSource]:
    engine: Engine = services.source_engine
    replace_table(engine, ORDERS_TABLE, sample_orders(3_000))
    with engine.begin() as conn:
        for row in awkward_orders(10_000):
            conn.execute(
                text(
                    "INSERT INTO orders VALUES "
                    "(:id, :email, :amount, :currency, :status, :moment, :moment)"
                ),
                dict(zip(INSERTED, row, strict=True)),
            )
    # The session's own zone must not leak into the text the fast path reads.
    elsewhere = create_engine(engine.url, connect_args={"options": "-c timezone=America/New_York"})
    yield SqlSource(elsewhere, ORDERS_DAILY.source)
    elsewhere.dispose()


def both_paths(
    source: SqlSource, window: ReadScope | None = None
) -> tuple[tuple[list[dict[str, Any]], Counter[str]], tuple[list[dict[str, Any]], Counter[str]]]:
    row_records: list[dict[str, Any]] = []
    row_rejected: Counter[str] = Counter()
    for batch in source.read_range(0, 20_000, 700, window):
        result = transform_orders(batch)
        row_records += as_read(result.records)
        row_rejected.update(result.rejected_by_reason())
    fast_records: list[dict[str, Any]] = []
    fast_rejected: Counter[str] = Counter()
    schema = ORDERS_DAILY.record_schema
    for table in source.read_range_text(0, 20_000, window):
        records, rejected = transform_table(
            table, transform_orders_columnar, transform_orders, schema
        )
        fast_records += plain_records(records, schema)
        fast_rejected.update(rejected)
    return (row_records, row_rejected), (fast_records, fast_rejected)


def test_the_columnar_path_makes_the_records_and_rejections_of_the_row_path(
    orders_source: SqlSource,
) -> None:
    (row_records, row_rejected), (fast_records, fast_rejected) = both_paths(orders_source)

    assert len(row_records) > 2_900
    assert fast_records == row_records
    assert fast_rejected == row_rejected
    assert {"invalid_email", "invalid_amount", "missing_amount", "unknown_status"} <= set(
        row_rejected
    )
    by_id = {record["order_id"]: record for record in fast_records}
    assert by_id[10_000]["customer_email"] == "J***@exämple.com"
    assert by_id[10_001]["customer_email"] == "q***@example.com"
    assert by_id[10_021]["created_at"] == "2026-03-29T01:30:00.500000Z"
    assert by_id[10_023]["created_at"] == "1969-07-20T20:17:00Z"
    assert by_id[10_024]["created_at"] == "2026-03-29T01:30:00Z"


def test_the_columnar_path_reads_the_same_cursor_window(orders_source: SqlSource) -> None:
    cursor = CursorWindow(
        column="updated_at",
        low=datetime(2026, 1, 1, 1, tzinfo=UTC),
        high=datetime(2026, 1, 1, 3, tzinfo=UTC),
    )
    window = ReadScope(utc_day(date(2026, 1, 1)), date(2026, 1, 1), cursor=cursor)
    (row_records, _), (fast_records, _) = both_paths(orders_source, window)

    assert 0 < len(fast_records) < 3_000
    assert fast_records == row_records


@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz", "parquet"])
@pytest.mark.parametrize(
    "key_hi", [5_000, 20_000], ids=["plain rows (Arrow's JSON)", "awkward rows too (Python's)"]
)
def test_a_part_written_from_arrow_has_the_bytes_of_one_written_from_records(
    orders_source: SqlSource, output_format: str, key_hi: int
) -> None:
    row_records = [
        record
        for batch in orders_source.read_range(0, key_hi, 700)
        for record in transform_orders(batch).records
    ]
    schema = ORDERS_DAILY.record_schema
    tables = [
        transform_table(table, transform_orders_columnar, transform_orders, schema)[0]
        for table in orders_source.read_range_text(0, key_hi)
    ]

    from_records, from_tables = io.BytesIO(), io.BytesIO()
    writer = make_writer(output_format, from_records, ORDERS_DAILY.schema)
    writer.write_records(row_records)
    by_records = writer.close()
    writer = make_writer(output_format, from_tables, ORDERS_DAILY.schema)
    for table in tables:
        writer.write_table(table)
    by_tables = writer.close()

    assert by_tables.rows == by_records.rows == len(row_records) > 2_900
    if output_format == "parquet":  # row groups follow the batches, so compare rows
        assert list(read_part(from_tables.getvalue(), "parquet")) == as_read(row_records)
    else:
        decoded = gzip.decompress(from_tables.getvalue())
        assert decoded == gzip.decompress(from_records.getvalue())


def test_a_backend_terminated_during_copy_is_a_transient_error_and_the_pool_recovers(
    services: Services,
) -> None:
    engine = services.source_engine
    replace_table(engine, ORDERS_TABLE, sample_orders(200_000))
    source = SqlSource(engine, ORDERS_DAILY.source)
    # Terminate every backend of this session's database reading orders from COPY, from
    # a connection of our own, as soon as one is seen: the read fails on the driver's
    # connection, unwrapped. (Other sessions' COPYs are not ours to stop.)
    stop = threading.Event()

    def terminate_copies() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'COPY (SELECT%' "
                        "AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
                conn.commit()
                if killed:
                    return

    killer = threading.Thread(target=terminate_copies)
    killer.start()
    try:
        with pytest.raises(Exception) as failure:
            for _ in range(20):  # until one COPY is caught in the act
                for _table in source.read_range_text(0, 300_000):
                    pass
    finally:
        stop.set()
        killer.join()

    assert is_transient(failure.value), repr(failure.value)
    assert sum(table.num_rows for table in source.read_range_text(0, 300_000)) == 200_000
