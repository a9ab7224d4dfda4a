"""Pipelines keyed on something other than a dense integer, for the chunking tests of
issue 14: a sparse integer key, a text key that repeats, a UUID key (on the row path and
on the COPY path), a timestamp key that repeats. Imported by the integration tests; loaded
by e2e workers through ETL_PIPELINE_MODULES=key_pipelines (with tests/ on PYTHONPATH).

Every table has a ``row_no`` column numbering its rows 0..n-1, and every pipeline writes
``{"row_no", "key"}`` per row, so a test checks that a run read each row exactly once.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, Table, Text, Uuid

from etl.adapters.db import replace_table
from etl.domain.transform import BatchResult, Record, Row, map_rows
from etl.pipelines.base import Pipeline, Source

if TYPE_CHECKING:
    import pyarrow as pa

_METADATA = MetaData()
SPARSE_IDS = Table(
    "etl_test_sparse_ids", _METADATA,
    Column("id", BigInteger, primary_key=True), Column("row_no", BigInteger, nullable=False),
)  # fmt: skip
TEXT_KEYS = Table(
    "etl_test_text_keys", _METADATA,
    Column("row_no", BigInteger, primary_key=True), Column("code", Text, nullable=False),
)  # fmt: skip
UUID_KEYS = Table(
    "etl_test_uuid_keys", _METADATA,
    Column("id", Uuid, primary_key=True), Column("row_no", BigInteger, nullable=False),
)  # fmt: skip
TIME_KEYS = Table(
    "etl_test_time_keys", _METADATA,
    Column("row_no", BigInteger, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)  # fmt: skip

SCHEMA = (("row_no", "integer"), ("key", "string"))


def _transform_on(key_column: str) -> Any:
    def record(row: Row) -> Record:
        return {"row_no": int(row["row_no"]), "key": str(row[key_column])}

    def transform(rows: Sequence[Row]) -> BatchResult:
        """Each row as its number and its key, as text."""
        return map_rows(rows, key_column, record)

    return transform


def _pipeline(name: str, table: Table, key_column: str, **fields: Any) -> Pipeline:
    return Pipeline(
        name=name,
        description=f"Test rows of {table.name}, chunked on {key_column}.",
        source=Source(table=table.name, key_column=key_column, columns=(key_column, "row_no")),
        transform=_transform_on(key_column),
        schema=SCHEMA,
        chunk_size=1_000,
        schedule=None,
        **fields,
    )


def uuid_keys_columnar(table: pa.Table) -> tuple[pa.Table, pa.Array]:
    """The COPY path's batch (every column text; the key too, being a UUID) in Arrow."""
    import pyarrow as pa

    records = pa.table({"row_no": table["row_no"].cast(pa.int64()), "key": table["id"]})
    return records, pa.array([True] * table.num_rows)


SPARSE_PIPELINE = _pipeline("sparse_ids", SPARSE_IDS, "id")
TEXT_PIPELINE = _pipeline("text_keys", TEXT_KEYS, "code")
UUID_PIPELINE = _pipeline("uuid_keys", UUID_KEYS, "id")
UUID_COLUMNAR_PIPELINE = _pipeline(
    "uuid_keys_columnar", UUID_KEYS, "id", columnar_transform=uuid_keys_columnar
)
TIME_PIPELINE = _pipeline("time_keys", TIME_KEYS, "at")

PIPELINES = [SPARSE_PIPELINE, TEXT_PIPELINE, UUID_PIPELINE, UUID_COLUMNAR_PIPELINE, TIME_PIPELINE]


# -- the tables' rows ----------------------------------------------------------------------


def sparse_ids() -> Iterator[int]:
    """The issue's sparse key: ids 1..1,000 and 1,000,000..2,000,000."""
    yield from range(1, 1_001)
    yield from range(1_000_000, 2_000_001)


def seed_sparse_ids(engine: Engine) -> int:
    """Fill etl_test_sparse_ids; the row count."""
    return replace_table(engine, SPARSE_IDS, ((key, n) for n, key in enumerate(sparse_ids())))


def seed_text_keys(engine: Engine, rows: int, seed: int = 14) -> int:
    """Fill etl_test_text_keys with ``rows`` rows over some 40 codes in mixed case, one of
    them (``m-heavy``) on a quarter of the rows; the row count."""
    rng = random.Random(seed)  # nosec B311
    codes = [
        f"{word}-{n}" for word in ("Alpha", "alpha", "beta", "Zulu", "éclair") for n in range(8)
    ]
    keys = ["m-heavy" if rng.random() < 0.25 else rng.choice(codes) for _ in range(rows)]
    return replace_table(engine, TEXT_KEYS, enumerate(keys))


def uuid_keys(rows: int, seed: int = 14) -> list[uuid.UUID]:
    """``rows`` distinct random (version 4) UUIDs, the same every time."""
    rng = random.Random(seed)  # nosec B311
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(rows)]


def seed_uuid_keys(engine: Engine, rows: int) -> int:
    """Fill etl_test_uuid_keys with ``rows`` random UUIDs; the row count."""
    return replace_table(engine, UUID_KEYS, ((key, n) for n, key in enumerate(uuid_keys(rows))))


def seed_time_keys(engine: Engine, rows: int) -> int:
    """Fill etl_test_time_keys: each run of 20 rows shares a timestamp (with microseconds);
    the row count."""
    start = datetime(2026, 3, 29, 0, 0, 0, 123_456, tzinfo=UTC)
    return replace_table(
        engine, TIME_KEYS, ((n, start + timedelta(seconds=n // 20)) for n in range(rows))
    )
