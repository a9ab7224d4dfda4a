from __future__ import annotations

import random
from itertools import pairwise

import pytest

from etl.domain.chunks import ChunkRange, plan_chunks


def assert_exact_cover(chunks: list[ChunkRange], key_min: int, key_max: int, size: int) -> None:
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert chunks[0].key_lo == key_min
    assert chunks[-1].key_hi == key_max + 1
    for before, after in pairwise(chunks):
        assert before.key_hi == after.key_lo, f"gap or overlap between {before} and {after}"
    for chunk in chunks:
        assert 1 <= chunk.key_hi - chunk.key_lo <= size
    for chunk in chunks[:-1]:
        assert chunk.key_hi - chunk.key_lo == size
    assert len(chunks) == -(-(key_max - key_min + 1) // size)


def test_ranges_are_half_open_contiguous_and_indexed_from_zero() -> None:
    assert plan_chunks(1, 10, 4) == [
        ChunkRange(index=0, key_lo=1, key_hi=5),
        ChunkRange(index=1, key_lo=5, key_hi=9),
        ChunkRange(index=2, key_lo=9, key_hi=11),
    ]


def test_last_chunk_is_shorter_when_the_range_is_not_a_multiple() -> None:
    chunks = plan_chunks(1, 2001, 500)
    assert len(chunks) == 5
    assert chunks[-1] == ChunkRange(index=4, key_lo=2001, key_hi=2002)


def test_exact_multiple_gives_full_chunks_only() -> None:
    chunks = plan_chunks(1, 2000, 500)
    assert [(c.key_lo, c.key_hi) for c in chunks] == [
        (1, 501),
        (501, 1001),
        (1001, 1501),
        (1501, 2001),
    ]


def test_a_single_key_is_one_chunk_of_one_key() -> None:
    assert plan_chunks(42, 42, 1000) == [ChunkRange(index=0, key_lo=42, key_hi=43)]


def test_chunk_size_one_gives_one_chunk_per_key() -> None:
    chunks = plan_chunks(-2, 2, 1)
    assert [(c.key_lo, c.key_hi) for c in chunks] == [(-2, -1), (-1, 0), (0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize(("key_min", "key_max"), [(None, None), (None, 5), (5, None)])
def test_an_empty_source_plans_no_chunks(key_min: int | None, key_max: int | None) -> None:
    assert plan_chunks(key_min, key_max, 100) == []


@pytest.mark.parametrize("size", [0, -1, -50_000])
def test_a_chunk_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        plan_chunks(1, 10, size)


def test_a_chunk_size_below_one_is_refused_even_for_an_empty_source() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(None, None, 0)


def test_a_maximum_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="key_max 9 is below key_min 10"):
        plan_chunks(10, 9, 5)


def test_many_random_ranges_are_covered_exactly_once() -> None:
    rng = random.Random(20261123)
    for _ in range(1000):
        key_min = rng.randint(-1_000_000, 1_000_000)
        key_max = key_min + rng.choice([0, 1, rng.randint(0, 50), rng.randint(0, 100_000)])
        width = key_max - key_min + 1
        # From one key to more than the whole range, but never more than 500 chunks.
        size = rng.choice([1, 2, 3, rng.randint(1, 1000), rng.randint(1, width + 10)])
        size = max(size, -(-width // 500))
        chunks = plan_chunks(key_min, key_max, size)
        assert_exact_cover(chunks, key_min, key_max, size)
        covered = sum(chunk.key_hi - chunk.key_lo for chunk in chunks)
        assert covered == key_max - key_min + 1
