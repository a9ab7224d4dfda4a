"""Chunks from the data: boundaries at every chunk_size-th row in key order, ranges that
partition the window's rows exactly whatever the keys, and the most chunks a run may have."""

from __future__ import annotations

import re
import uuid
from bisect import bisect_left, bisect_right
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.domain.chunks import (
    ChunkKey,
    ChunkRange,
    KeySpan,
    PlanTooLarge,
    as_chunk_key,
    check_chunk_count,
    chunk_starts,
    consecutive_key_boundaries,
    count_chunks,
    describe_key_range,
    pick_boundaries,
    plan_chunks,
    plan_from_key_ends,
)


def plan_of(keys: list[Any], size: int) -> list[ChunkRange]:
    """What planning makes of a window holding ``keys``: the span, then the boundaries."""
    ordered = sorted(keys)
    span = KeySpan(len(ordered), ordered[0], ordered[-1]) if ordered else KeySpan(0)
    return plan_chunks(span, pick_boundaries(ordered, size))


def in_chunk(key: Any, chunk: ChunkRange) -> bool:
    """The range a chunk reads, as the source's SQL says it."""
    if chunk.key_hi_inclusive:
        return bool(chunk.key_lo <= key <= chunk.key_hi)
    return bool(chunk.key_lo <= key < chunk.key_hi)


def rows_per_chunk(keys: list[Any], chunks: list[ChunkRange]) -> list[int]:
    """How many of ``keys`` each chunk reads; fails if a key is read by no chunk or two."""
    counts = Counter[int]()
    for key in keys:
        readers = [chunk.index for chunk in chunks if in_chunk(key, chunk)]
        assert len(readers) == 1, f"key {key!r} is read by chunks {readers}"
        counts[readers[0]] += 1
    return [counts[chunk.index] for chunk in chunks]


# -- the plan ------------------------------------------------------------------------------


def test_dense_integer_keys_share_the_rows_evenly_the_last_chunk_ending_at_key_max() -> None:
    # Ten rows at chunk_size 4: three chunks, of 4, 3 and 3 rows (not 4, 4 and 2).
    chunks = plan_of(list(range(1, 11)), 4)
    assert chunks == [
        ChunkRange(index=0, key_lo=1, key_hi=5),
        ChunkRange(index=1, key_lo=5, key_hi=8),
        ChunkRange(index=2, key_lo=8, key_hi=10, key_hi_inclusive=True),
    ]
    assert plan_of(list(range(1, 2001)), 500) == [
        ChunkRange(0, 1, 501),
        ChunkRange(1, 501, 1001),
        ChunkRange(2, 1001, 1501),
        ChunkRange(3, 1501, 2000, key_hi_inclusive=True),
    ]


def test_a_sparse_key_gets_chunks_even_in_rows_not_in_keys() -> None:
    # The source: ids 1..1,000 and 1,000,000..2,000,000, 1,001,001 rows.
    keys = [*range(1, 1_001), *range(1_000_000, 2_000_001)]
    chunks = plan_of(keys, 50_000)

    sizes = []
    for chunk in chunks:  # the keys are sorted: each chunk's rows are a slice of them
        end = bisect_right if chunk.key_hi_inclusive else bisect_left
        sizes.append(end(keys, chunk.key_hi) - bisect_left(keys, chunk.key_lo))
    assert len(chunks) == 21 and sum(sizes) == len(keys)
    assert set(sizes) == {47_666, 47_667}
    assert [chunk.key_lo for chunk in chunks[:2]] == [1, 1_046_667]
    assert (chunks[-1].key_hi, chunks[-1].key_hi_inclusive) == (2_000_000, True)


def test_text_keys_are_chunked_in_their_order() -> None:
    keys = ["delta", "alpha", "echo", "charlie", "bravo"]
    assert plan_of(keys, 2) == [
        ChunkRange(0, "alpha", "charlie"),
        ChunkRange(1, "charlie", "echo"),
        ChunkRange(2, "echo", "echo", key_hi_inclusive=True),
    ]


def test_a_key_repeated_across_a_boundary_stays_in_one_chunk() -> None:
    keys = [1, 2, 2, 2, 2, 2, 3, 4]
    chunks = plan_of(keys, 2)
    # Rows 0, 2, 4, 6 have keys 1, 2, 2, 3: the repeated 2 starts one chunk only.
    assert [(c.key_lo, c.key_hi, c.key_hi_inclusive) for c in chunks] == [
        (1, 2, False),
        (2, 3, False),
        (3, 4, True),
    ]
    assert rows_per_chunk(keys, chunks) == [1, 5, 2]


def test_a_window_of_one_key_is_one_chunk_however_many_rows() -> None:
    assert plan_of([7] * 5, 2) == [ChunkRange(0, 7, 7, key_hi_inclusive=True)]
    assert plan_of([42], 1000) == [ChunkRange(0, 42, 42, key_hi_inclusive=True)]


def test_an_empty_window_plans_no_chunks() -> None:
    assert plan_of([], 100) == []
    assert plan_chunks(KeySpan(0), []) == []


def test_the_plan_starts_at_key_min_even_when_that_row_went_before_the_boundaries() -> None:
    # The span saw key 1; by the time the boundaries are read its row is gone.
    chunks = plan_chunks(KeySpan(6, 1, 6), [2, 4, 6])
    assert [(c.key_lo, c.key_hi) for c in chunks] == [(1, 4), (4, 6), (6, 6)]
    assert rows_per_chunk([1, 2, 3, 4, 5, 6], chunks) == [3, 2, 1]


@given(
    keys=st.lists(st.integers(-50, 50), max_size=300),
    size=st.integers(1, 40),
)
def test_chunks_partition_the_rows_exactly_whatever_the_keys(keys: list[int], size: int) -> None:
    chunks = plan_of(keys, size)

    counts = rows_per_chunk(keys, chunks)  # every row read once, none twice

    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert all(count >= 1 for count in counts)  # no empty chunk
    assert len(chunks) <= count_chunks(len(keys), size)
    for before, after in pairwise(chunks):
        assert before.key_hi == after.key_lo and not before.key_hi_inclusive
    if chunks:
        assert chunks[-1].key_hi_inclusive and chunks[-1].key_hi == max(keys)
    if len(set(keys)) == len(keys):  # distinct keys: as many rows as can be, to a row
        assert len(chunks) == count_chunks(len(keys), size)
        assert max(counts, default=0) <= size
        assert max(counts, default=0) - min(counts, default=0) <= 1


@given(keys=st.lists(st.uuids(), min_size=1, max_size=200, unique=True), size=st.integers(1, 30))
def test_uuid_keys_as_text_partition_the_rows_too(keys: list[uuid.UUID], size: int) -> None:
    text_keys = [as_chunk_key(key) for key in keys]
    chunks = plan_of(text_keys, size)
    counts = rows_per_chunk(text_keys, chunks)
    assert sum(counts) == len(keys) and len(chunks) == count_chunks(len(keys), size)


def test_chunks_start_at_rows_that_share_the_rows_evenly() -> None:
    assert chunk_starts(7, 3) == [0, 3, 5]  # 3 chunks: 3, 2 and 2 rows
    assert chunk_starts(2000, 500) == [0, 500, 1000, 1500]
    assert chunk_starts(1, 500) == [0]
    assert chunk_starts(0, 500) == []


@given(rows=st.integers(0, 5_000), size=st.integers(1, 6_000))
def test_the_start_rows_are_those_the_sql_test_picks(rows: int, size: int) -> None:
    starts = chunk_starts(rows, size)
    chunks = len(starts)
    assert chunks == count_chunks(rows, size)
    assert starts == [row for row in range(rows) if row * chunks % rows < chunks]
    assert all(0 < later - earlier <= size for earlier, later in pairwise([*starts, rows]))


@given(low=st.integers(-(10**12), 10**12), rows=st.integers(1, 3_000), size=st.integers(1, 4_000))
def test_consecutive_integer_keys_get_the_boundaries_a_pass_over_them_would(
    low: int, rows: int, size: int
) -> None:
    keys = list(range(low, low + rows))
    span = KeySpan(rows, keys[0], keys[-1])
    assert consecutive_key_boundaries(span, size) == pick_boundaries(keys, size)


def test_keys_with_a_gap_or_not_integers_are_not_worked_out() -> None:
    assert consecutive_key_boundaries(KeySpan(3, 1, 4), 2) is None  # a gap: 4 keys, 3 rows
    assert consecutive_key_boundaries(KeySpan(3, "a", "c"), 2) is None
    assert consecutive_key_boundaries(KeySpan(0), 2) is None


def test_boundaries_are_the_first_keys_of_the_chunks_once_each() -> None:
    assert pick_boundaries([1, 2, 3, 4, 5, 6, 7], 3) == [1, 4, 6]
    assert pick_boundaries(["a", "a", "a", "b"], 2) == ["a"]
    assert pick_boundaries([], 5) == []
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        pick_boundaries([1], 0)


# -- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (5, 5),
        ("abc", "abc"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "2026-01-02T03:04:05.000006+00:00"),
        (date(2026, 1, 2), "2026-01-02"),
        (Decimal("12.50"), "12.50"),
    ],
)
def test_a_key_is_kept_as_a_json_scalar(value: object, key: ChunkKey) -> None:
    assert as_chunk_key(value) == key
    assert type(as_chunk_key(value)) is type(key)


@pytest.mark.parametrize("value", [True, b"raw", None])
def test_a_key_of_another_type_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="chunk key"):
        as_chunk_key(value)


def test_a_chunk_range_reads_as_people_expect() -> None:
    assert describe_key_range(1, 501, False) == "1..500"
    assert describe_key_range(1501, 2000, True) == "1501..2000"
    assert describe_key_range("a", "m", False) == "[a,m)"
    assert describe_key_range("m", "z", True) == "[m,z]"


# -- the limit -----------------------------------------------------------------------------


def test_the_count_is_the_rows_over_the_chunk_size_rounded_up() -> None:
    assert [count_chunks(rows, 500) for rows in (0, 1, 500, 501, 2000)] == [0, 1, 1, 2, 4]
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        count_chunks(10, 0)
    with pytest.raises(ValueError, match="rows must not be negative"):
        count_chunks(-1, 10)


def test_a_plan_over_the_limit_is_refused_naming_pipeline_count_size_limit_and_remedy() -> None:
    # The reproduction: chunk_size=5 on 300,000 rows.
    with pytest.raises(PlanTooLarge) as refused:
        check_chunk_count("orders_daily", 300_000, 5, 10_000)

    assert str(refused.value) == (
        "pipeline orders_daily would plan 60,000 chunks (300,000 rows at chunk_size 5), "
        "over the limit of 10,000 chunks a run: use a chunk_size of at least 30, "
        "or raise ETL_MAX_CHUNKS_PER_RUN"
    )
    assert (refused.value.chunks, refused.value.chunk_size, refused.value.max_chunks) == (
        60_000,
        5,
        10_000,
    )


@given(rows=st.integers(2, 10**9), limit=st.integers(1, 10_000))
def test_the_chunk_size_the_refusal_suggests_fits_under_the_limit(rows: int, limit: int) -> None:
    if count_chunks(rows, 1) <= limit:
        return
    with pytest.raises(PlanTooLarge) as refused:
        check_chunk_count("p", rows, 1, limit)
    found = re.search(r"chunk_size of at least ([0-9,]+),", str(refused.value))
    assert found is not None, refused.value
    suggested = int(found.group(1).replace(",", ""))
    assert count_chunks(rows, suggested) <= limit
    assert count_chunks(rows, suggested - 1) > limit


def test_a_plan_at_the_limit_is_allowed_and_an_empty_window_always_is() -> None:
    assert check_chunk_count("orders_daily", 300_000, 30, 10_000) == 10_000
    assert check_chunk_count("orders_daily", 0, 1, 1) == 0
    with pytest.raises(PlanTooLarge):
        check_chunk_count("orders_daily", 300_000, 29, 10_000)


@pytest.mark.timeout(10)
def test_a_runaway_plan_is_refused_from_its_row_count_alone() -> None:
    with pytest.raises(PlanTooLarge, match="1,000,000,000,000,000 chunks"):
        check_chunk_count("orders_daily", 10**15, 1, 10_000)


@pytest.mark.parametrize(
    ("key_min", "key_max", "estimated_rows", "planned"),
    [
        (1, 1_000, 1_000.0, True),
        (1, 1_250, 1_000.0, True),  # a fifth of the keys gaps: at most 25% more chunks
        (1, 1_251, 1_000.0, False),
        (1, 1_000, None, False),  # never analysed
        (1, 1_000, 0.0, False),
        (-500, 499, 1_000.0, True),
    ],
)
def test_a_unique_integer_key_is_planned_from_its_ends_only_when_dense(
    key_min: int, key_max: int, estimated_rows: float | None, planned: bool
) -> None:
    span = plan_from_key_ends(key_min, key_max, estimated_rows)

    if not planned:
        assert span is None
        return
    assert span == KeySpan(key_max - key_min + 1, key_min, key_max, counted=False)
    # chunks of at most chunk_size keys, as for a key with no gaps
    boundaries = consecutive_key_boundaries(span, 100)
    assert boundaries is not None and boundaries[0] == key_min
    assert len(boundaries) == count_chunks(span.rows, 100)
    assert all(high - low <= 100 for low, high in pairwise([*boundaries, key_max + 1]))
