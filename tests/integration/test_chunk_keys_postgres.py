"""Chunks even in rows, on any sortable key, on the real PostgreSQL (issue 14): the steps
of a run (plan, transform each chunk, commit) over tables keyed by a sparse integer, a
repeated text, a UUID (row path and COPY path) and a repeated timestamp. Each run must
read every row of its table exactly once; the sparse key's chunks must be even in rows.
The pure rules are unit tested in tests/unit/test_chunks.py."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from key_pipelines import (
    SPARSE_IDS,
    SPARSE_PIPELINE,
    TEXT_KEYS,
    TEXT_PIPELINE,
    TIME_KEYS,
    TIME_PIPELINE,
    UUID_COLUMNAR_PIPELINE,
    UUID_KEYS,
    UUID_PIPELINE,
    seed_sparse_ids,
    seed_text_keys,
    seed_time_keys,
    seed_uuid_keys,
    uuid_keys,
)
from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, Table, text

from etl.adapters.db import SqlSource, replace_table
from etl.bootstrap import Services
from etl.domain.chunks import KeySpan
from etl.domain.runs import Chunk, RunState
from etl.domain.windows import ReadScope
from etl.pipelines import PIPELINES, Pipeline, Source
from etl.service import execution as steps

from builders import new_run, read_json_lines_gzip, utc_day

pytestmark = pytest.mark.integration


def run_to_the_end(services: Services, pipeline: str, chunk_size: int) -> tuple[str, list[Chunk]]:
    """Plan, transform every chunk and commit a run of ``pipeline``; its id and chunks."""
    run_id = new_run(services.ledger, pipeline=pipeline, params={"chunk_size": chunk_size})
    began = time.monotonic()
    pending = steps.plan_run(services, run_id)
    planned_s = time.monotonic() - began
    assert pending is not None
    print(f"{pipeline}: {len(pending)} chunks planned in {planned_s:.2f} s")
    for chunk in pending:
        steps.transform_chunk(services, run_id, chunk.index)
    run = steps.commit_run(services, run_id)
    assert run.state is RunState.SUCCEEDED, run.reason
    return run_id, services.ledger.get_chunks(run_id)


def output_rows(services: Services, run_id: str) -> list[dict[str, Any]]:
    """Every record of the run's parts, through its manifest."""
    run = services.ledger.get_run(run_id)
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    return [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(services.parts.get_bytes(part["key"]))
    ]


def assert_every_row_once(records: list[dict[str, Any]], rows: int) -> None:
    numbers = sorted(record["row_no"] for record in records)
    assert len(numbers) == len(set(numbers)), f"{len(numbers) - len(set(numbers))} rows twice"
    assert numbers == list(range(rows)), f"{rows - len(set(numbers))} rows missing"


@pytest.fixture
def key_table(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Pipeline, Table, Callable[[Engine], int]], int]]:
    """Registers a pipeline of key_pipelines and seeds its table (dropped afterwards);
    returns the number of rows seeded."""
    tables: list[Table] = []

    def make(pipeline: Pipeline, table: Table, seed: Callable[[Engine], int]) -> int:
        monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)
        tables.append(table)
        return seed(services.source_engine)

    yield make
    for table in tables:
        table.drop(services.source_engine, checkfirst=True)


def test_a_sparse_key_gets_chunks_even_in_rows(services: Services, key_table: Any) -> None:
    # The source: ids 1..1,000 and 1,000,000..2,000,000. Chunks of 50,000 keys
    # would have put 1,000 rows in the first chunk and 50,000 in most others.
    rows = key_table(SPARSE_PIPELINE, SPARSE_IDS, seed_sparse_ids)
    assert rows == 1_001_001

    run_id, chunks = run_to_the_end(services, SPARSE_PIPELINE.name, 50_000)

    sizes = [chunk.rows or 0 for chunk in chunks]
    print(f"rows per chunk: {sizes}")
    assert len(chunks) == 21 and sum(sizes) == rows
    assert max(sizes) <= 50_000
    mean = rows / len(chunks)
    assert all(0.8 * mean <= size <= 1.2 * mean for size in sizes), sizes
    assert [chunk.key_lo for chunk in chunks[:2]] == [1, 1_046_667]  # in rows, not keys
    assert (chunks[-1].key_hi, chunks[-1].key_hi_inclusive) == (2_000_000, True)
    window = services.ledger.get_run(run_id).window
    assert window is not None and (window.key_min, window.key_max) == (1, 2_000_000)


def test_a_text_key_that_repeats_is_read_once_per_row(services: Services, key_table: Any) -> None:
    rows = key_table(TEXT_PIPELINE, TEXT_KEYS, lambda engine: seed_text_keys(engine, 6_000))

    run_id, chunks = run_to_the_end(services, TEXT_PIPELINE.name, 500)

    assert_every_row_once(output_rows(services, run_id), rows)
    assert all(isinstance(chunk.key_lo, str) for chunk in chunks)
    assert all(chunk.rows for chunk in chunks)  # a repeated key never makes an empty chunk
    # "m-heavy" is on about 1,500 rows: they all land in one chunk, which has them all.
    heavy = [c for c in chunks if c.key_lo == "m-heavy"]
    assert len(heavy) == 1 and (heavy[0].rows or 0) > 1_000
    assert len(chunks) < 12  # ceil(6,000 / 500), less the boundaries inside "m-heavy"


@pytest.mark.parametrize(
    "pipeline", [UUID_PIPELINE, UUID_COLUMNAR_PIPELINE], ids=["row path", "COPY path"]
)
def test_a_uuid_key_is_planned_and_read_once_per_row(
    services: Services, key_table: Any, pipeline: Pipeline
) -> None:
    rows = key_table(pipeline, UUID_KEYS, lambda engine: seed_uuid_keys(engine, 10_000))

    run_id, chunks = run_to_the_end(services, pipeline.name, 1_000)

    records = output_rows(services, run_id)
    assert_every_row_once(records, rows)
    assert {record["key"] for record in records} == {str(key) for key in uuid_keys(rows)}
    assert len(chunks) == 10 and {chunk.rows for chunk in chunks} == {1_000}
    ordered = sorted(str(key) for key in uuid_keys(rows))
    assert [chunk.key_lo for chunk in chunks] == ordered[::1_000]  # UUIDs as text
    assert (chunks[-1].key_hi, chunks[-1].key_hi_inclusive) == (ordered[-1], True)


def test_a_timestamp_key_that_repeats_is_read_once_per_row(
    services: Services, key_table: Any
) -> None:
    rows = key_table(TIME_PIPELINE, TIME_KEYS, lambda engine: seed_time_keys(engine, 5_000))

    run_id, chunks = run_to_the_end(services, TIME_PIPELINE.name, 490)

    assert_every_row_once(output_rows(services, run_id), rows)
    window = services.ledger.get_run(run_id).window
    assert window is not None and isinstance(window.key_min, str)
    assert isinstance(window.key_max, str)  # ISO text, in the session's time zone
    first, last = datetime.fromisoformat(window.key_min), datetime.fromisoformat(window.key_max)
    assert (first, last) == (  # the same instants
        datetime(2026, 3, 29, 0, 0, 0, 123_456, tzinfo=UTC),
        datetime(2026, 3, 29, 0, 4, 9, 123_456, tzinfo=UTC),
    )
    # 11 chunks of about 455 rows, each boundary moved back to the first of the 20 rows
    # that share its timestamp.
    sizes = [chunk.rows or 0 for chunk in chunks]
    print(f"rows per chunk: {sizes}")
    assert len(chunks) == 11 and all(abs(size - rows / 11) < 21 for size in sizes), sizes


@pytest.mark.parametrize(
    ("query", "key", "columns"),
    [
        # repeated text keys, a quarter of them one code; a filter that drops some
        (
            "SELECT row_no, code FROM etl_test_text_keys WHERE row_no % 7 <> 3",
            "code",
            ("row_no", "code"),
        ),
        # sparse integer keys (a gap of a million), filtered
        (
            "SELECT id, row_no FROM etl_test_sparse_ids WHERE row_no % 5 <> 0",
            "id",
            ("id", "row_no"),
        ),
    ],
    ids=["text keys that repeat", "sparse integer keys"],
)
def test_a_query_is_planned_in_one_pass_as_in_two(
    services: Services, key_table: Any, query: str, key: str, columns: tuple[str, ...]
) -> None:
    """plan_keys runs a query once for its span and its boundaries: the same as key_span
    and then key_boundaries, each a pass over the query; and no boundaries for a plan of
    too many chunks."""
    from etl.adapters.db import SqlSource
    from etl.pipelines import Source

    key_table(TEXT_PIPELINE, TEXT_KEYS, lambda engine: seed_text_keys(engine, 20_000))
    key_table(SPARSE_PIPELINE, SPARSE_IDS, seed_sparse_ids)
    source = SqlSource(services.source_engine, Source(query=query, key_column=key, columns=columns))

    for chunk_size in (1_000, 7_777, 1_000_000):
        span = source.key_span()
        in_two = (span, source.key_boundaries(chunk_size, span))
        assert source.plan_keys(chunk_size, 10_000) == in_two, chunk_size
        assert len(in_two[1]) >= 2 or chunk_size == 1_000_000

    span, boundaries = source.plan_keys(1_000, max_chunks=2)  # more than 2 chunks: refused
    assert span == source.key_span() and boundaries == []


# -- a unique integer key planned from its ends, with no count -----------------------------

DENSE_METADATA = MetaData()
DENSE_IDS = Table(
    "etl_test_dense_ids", DENSE_METADATA,
    Column("id", BigInteger, primary_key=True), Column("row_no", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)  # fmt: skip
REPEATED_IDS = Table(
    "etl_test_repeated_ids", DENSE_METADATA,
    Column("id", BigInteger, index=True), Column("row_no", BigInteger, nullable=False),
)  # fmt: skip
DENSE_PIPELINE = dataclasses.replace(  # the sparse pipeline's records, from this table
    SPARSE_PIPELINE,
    name="dense_ids",
    source=Source(table=DENSE_IDS.name, key_column="id", columns=("id", "row_no")),
)


def ids_without_every_tenth(top: int) -> list[int]:
    """1..top less 10, 20, 30...: a key with a few gaps (a tenth of its keys deleted)."""
    return [key for key in range(1, top + 1) if key % 10]


def seed_ids(engine: Engine, table: Table, ids: list[int], analyse: bool = True) -> int:
    """Fill ``table`` with ``ids`` (row_no in key order), ANALYZEd as autovacuum would."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [(key, n, moment)[: len(table.columns)] for n, key in enumerate(ids)]
    count = replace_table(engine, table, rows)
    if analyse:
        with engine.begin() as conn:
            conn.execute(text(f"ANALYZE {table.name}"))  # nosec B608
    return count


@pytest.fixture
def dense_tables(services: Services) -> Iterator[None]:
    yield
    for table in (DENSE_IDS, REPEATED_IDS):
        table.drop(services.source_engine, checkfirst=True)


def test_a_unique_integer_key_with_few_gaps_is_planned_from_its_ends(
    services: Services, dense_tables: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of chunk_size keys, not rows (no count): the tenth of the keys that are
    gaps make each chunk a tenth smaller; and the run reads every row once."""
    ids = ids_without_every_tenth(2_000)
    rows = seed_ids(services.source_engine, DENSE_IDS, ids)
    source = SqlSource(services.source_engine, DENSE_PIPELINE.source)

    span, boundaries = source.plan_keys(200, max_chunks=100)

    assert span == KeySpan(rows=1_999, key_min=1, key_max=1_999, counted=False)
    assert boundaries == list(range(1, 2_000, 200))  # 10 chunks; counted, they were 9
    monkeypatch.setitem(PIPELINES, DENSE_PIPELINE.name, DENSE_PIPELINE)
    run_id, chunks = run_to_the_end(services, DENSE_PIPELINE.name, 200)
    assert [chunk.rows for chunk in chunks] == [180] * 10
    assert_every_row_once(output_rows(services, run_id), rows)


@pytest.mark.parametrize(
    ("table", "ids", "analyse"),
    [
        (DENSE_IDS, list(range(1, 4_001, 2)), True),  # every other key a gap: too sparse
        (DENSE_IDS, ids_without_every_tenth(2_000), False),  # never analysed: no estimate
        (REPEATED_IDS, ids_without_every_tenth(2_000), True),  # an index, but not unique
    ],
    ids=["sparse", "no statistics", "not unique"],
)
def test_any_other_integer_key_is_counted_and_shared_evenly_in_rows(
    services: Services, dense_tables: None, table: Table, ids: list[int], analyse: bool
) -> None:
    rows = seed_ids(services.source_engine, table, ids, analyse)
    source = SqlSource(
        services.source_engine, Source(table=table.name, key_column="id", columns=("id",))
    )

    span, boundaries = source.plan_keys(200, max_chunks=100)

    assert span == KeySpan(rows=rows, key_min=ids[0], key_max=ids[-1], counted=True)
    assert len(boundaries) == -(-rows // 200)


def test_a_window_or_a_plan_of_too_many_chunks_from_the_ends_is_counted(
    services: Services, dense_tables: None
) -> None:
    """A window's keys are not the table's (its rows are counted), and a plan from the
    ends over max_chunks is left to the count, which decides as it always did."""
    ids = ids_without_every_tenth(2_000)
    rows = seed_ids(services.source_engine, DENSE_IDS, ids)
    source = SqlSource(
        services.source_engine,
        Source(table=DENSE_IDS.name, key_column="id", columns=("id",), time_column="at"),
    )
    day = ReadScope(utc_day(date(2026, 1, 1)), date(2026, 1, 1), time_column="at")

    windowed, _ = source.plan_keys(200, max_chunks=100, window=day)
    assert windowed == KeySpan(rows=rows, key_min=1, key_max=1_999, counted=True)
    # 1,999 keys make 10 chunks of 200, the 1,800 rows 9: only the count allows it.
    span, boundaries = source.plan_keys(200, max_chunks=9)
    assert span.counted and len(boundaries) == 9
