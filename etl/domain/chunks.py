"""Splitting a source's key range into fixed chunks, and the most a run may have."""

from __future__ import annotations

from dataclasses import dataclass

from etl.domain.errors import PlanTooLarge


@dataclass(frozen=True)
class ChunkRange:
    """One chunk of work: the keys ``key_lo <= key < key_hi``."""

    index: int
    key_lo: int
    key_hi: int


def count_chunks(key_min: int | None, key_max: int | None, chunk_size: int) -> int:
    """How many chunks ``plan_chunks`` would make, without making them."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if key_min is None or key_max is None:
        return 0
    if key_max < key_min:
        raise ValueError(f"key_max {key_max} is below key_min {key_min}")
    return -(-(key_max - key_min + 1) // chunk_size)


def check_chunk_count(
    pipeline: str, key_min: int | None, key_max: int | None, chunk_size: int, max_chunks: int
) -> int:
    """The number of chunks of the plan; raises PlanTooLarge above ``max_chunks``.

    Counted from the key range alone, so a runaway plan is refused before a single
    chunk of it exists.
    """
    count = count_chunks(key_min, key_max, chunk_size)
    if key_min is not None and key_max is not None and count > max_chunks:
        raise PlanTooLarge(pipeline, key_min, key_max, chunk_size, max_chunks)
    return count


def plan_chunks(key_min: int | None, key_max: int | None, chunk_size: int) -> list[ChunkRange]:
    """Cover ``[key_min, key_max]`` with consecutive ranges of ``chunk_size`` keys.

    The ranges are fixed at planning time, so every chunk task reads a window that does
    not move under it, and a redelivered chunk reads the same keys again.
    """
    count = count_chunks(key_min, key_max, chunk_size)  # refuses a bad size or range
    if key_min is None or key_max is None:
        return []
    return [
        ChunkRange(
            index=index,
            key_lo=key_min + index * chunk_size,
            key_hi=min(key_min + (index + 1) * chunk_size, key_max + 1),
        )
        for index in range(count)
    ]
