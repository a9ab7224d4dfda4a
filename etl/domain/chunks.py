"""Splitting a source's key range into fixed chunks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkRange:
    """One chunk of work: the keys ``key_lo <= key < key_hi``."""

    index: int
    key_lo: int
    key_hi: int


def plan_chunks(key_min: int | None, key_max: int | None, chunk_size: int) -> list[ChunkRange]:
    """Cover ``[key_min, key_max]`` with consecutive ranges of ``chunk_size`` keys.

    The ranges are fixed at planning time, so every chunk task reads a window that does
    not move under it, and a redelivered chunk reads the same keys again.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if key_min is None or key_max is None:
        return []
    if key_max < key_min:
        raise ValueError(f"key_max {key_max} is below key_min {key_min}")
    chunks = []
    lo = key_min
    index = 0
    while lo <= key_max:
        hi = min(lo + chunk_size, key_max + 1)
        chunks.append(ChunkRange(index=index, key_lo=lo, key_hi=hi))
        lo = hi
        index += 1
    return chunks
