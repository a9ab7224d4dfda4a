"""Splitting a run's rows into chunks of at most ``chunk_size`` rows, even in rows, on any
sortable key, and the most chunks a run may have.

A plan is made from the data: the number of rows in the run's window (to refuse a
runaway plan before anything else), then, for the ``ceil(rows / chunk_size)`` chunks that
share the rows evenly, the key of each one's first row in key order (the *boundaries*).
Chunk ``i`` reads ``lo_i <= key < lo_{i+1}``; the last one reads ``lo_last <= key <=
key_max``, ``key_max`` fixed at planning time. The ranges are contiguous and disjoint, so
they partition the window's rows exactly whatever the keys' spacing; a key repeated
across a boundary keeps all its rows in one chunk (that chunk is larger, never empty).

A table whose key is a unique integer with few gaps (its primary key, say) is planned
from its ends instead, as Sqoop and Spark split a table: chunks of ``chunk_size`` keys
from ``key_min`` to ``key_max``, with no count. A unique key puts at most ``chunk_size``
rows in each; the keys' few gaps make some chunks a little smaller. The span then counts
keys, not rows (``KeySpan.counted`` is false), and the adapter decides whether a key is
such a key (etl.adapters.db.SqlSource.plan_keys).

Keys are kept as JSON scalars (``ChunkKey``): an integer key stays an int; text, UUID,
decimal and time keys become strings the database compares with the column's own type.
The order of keys is the database's (collations included), never Python's: nothing here
compares two keys except for equality.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

from etl.domain.errors import PlanTooLarge

# A chunk boundary or key bound as recorded in the ledger and the manifest: JSON scalars.
ChunkKey = int | str


def as_chunk_key(value: object) -> ChunkKey:
    """A key value read from a source as a JSON scalar: ints stay ints; UUIDs, decimals
    and floats become their text; dates and times their ISO form."""
    if isinstance(value, bool):
        raise TypeError("a boolean column cannot be a chunk key")
    if isinstance(value, int | str):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"a key of type {type(value).__name__} cannot be a chunk key")


@dataclass(frozen=True)
class KeySpan:
    """The rows of a run's window with a key, and their smallest and largest key (both
    None when there is none). Not ``counted``: a span read from a unique integer key's
    ends alone, whose ``rows`` is the number of keys from ``key_min`` to ``key_max``, as
    many as its rows at most."""

    rows: int
    key_min: ChunkKey | None = None
    key_max: ChunkKey | None = None
    counted: bool = True


@dataclass(frozen=True)
class ChunkRange:
    """One chunk of work: the keys ``key_lo <= key < key_hi``, or ``<= key_hi`` when
    ``key_hi_inclusive`` (the last chunk of a plan, which ends at the window's largest key)."""

    index: int
    key_lo: ChunkKey
    key_hi: ChunkKey
    key_hi_inclusive: bool = False


def count_chunks(rows: int, chunk_size: int) -> int:
    """How many chunks of ``chunk_size`` rows ``rows`` make at most (fewer when a key
    repeats across a boundary)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if rows < 0:
        raise ValueError(f"rows must not be negative, got {rows}")
    return -(-rows // chunk_size)


def check_chunk_count(pipeline: str, rows: int, chunk_size: int, max_chunks: int) -> int:
    """The most chunks the plan can have; raises PlanTooLarge above ``max_chunks``.

    Counted from the number of rows alone, so a runaway plan is refused before a single
    boundary of it is computed.
    """
    count = count_chunks(rows, chunk_size)
    if count > max_chunks:
        raise PlanTooLarge(pipeline, rows, chunk_size, max_chunks)
    return count


def chunk_starts(rows: int, chunk_size: int) -> list[int]:
    """The row numbers (from 0, in key order) at which the chunks of ``rows`` rows start:
    ``count_chunks(rows, chunk_size)`` chunks sharing the rows evenly, so their sizes differ
    by one row at most and none exceeds ``chunk_size``.

    Row ``r`` starts a chunk exactly when ``r * chunks % rows < chunks``: the test a
    source's SQL applies to its numbered rows (etl.adapters.db.SqlSource.key_boundaries,
    and plan_keys for a query).
    """
    chunks = count_chunks(rows, chunk_size)
    return [-(-index * rows // chunks) for index in range(chunks)]


def consecutive_key_boundaries(span: KeySpan, chunk_size: int) -> list[ChunkKey] | None:
    """The boundaries of a span of integer keys with exactly as many rows as integers from
    ``key_min`` to ``key_max`` (an identity key with no gaps, the common case), worked out
    without reading a key: row ``r`` holds key ``key_min + r``. None for any other span.

    Were the keys not unique (a repeat and a gap that happen to even out), the ranges
    would still partition the rows exactly; only their sizes would differ.
    """
    low, high = span.key_min, span.key_max
    if not (isinstance(low, int) and isinstance(high, int)) or high - low + 1 != span.rows:
        return None
    return [low + row for row in chunk_starts(span.rows, chunk_size)]


# A unique integer key is planned from its ends when it spans at most this many times the
# rows the database estimates: the plan then has at most 25% more chunks than one that
# counted the rows (all the more smaller ones), and no count. Sparser, the rows are counted.
DENSE_KEY_SPAN = 1.25


def plan_from_key_ends(key_min: int, key_max: int, estimated_rows: float | None) -> KeySpan | None:
    """The span of a unique integer key planned from its ends (``counted`` false: every
    integer from ``key_min`` to ``key_max`` taken as a row, so consecutive_key_boundaries
    makes chunks of ``chunk_size`` keys), or None when the key is too sparse for that,
    or the database has no estimate of its rows (a table never analysed)."""
    keys = key_max - key_min + 1
    if not estimated_rows or estimated_rows <= 0 or keys > DENSE_KEY_SPAN * estimated_rows:
        return None
    return KeySpan(rows=keys, key_min=key_min, key_max=key_max, counted=False)


def pick_boundaries(sorted_keys: Sequence[ChunkKey], chunk_size: int) -> list[ChunkKey]:
    """The keys at the rows ``chunk_starts`` names in ``sorted_keys`` (the window's keys in
    key order), without repeats: what a source computes in SQL, written out for a source
    held in memory."""
    boundaries: list[ChunkKey] = []
    for row in chunk_starts(len(sorted_keys), chunk_size):
        key = sorted_keys[row]
        if not boundaries or boundaries[-1] != key:
            boundaries.append(key)
    return boundaries


def plan_chunks(span: KeySpan, boundaries: Sequence[ChunkKey]) -> list[ChunkRange]:
    """The chunks of a window from its span and its boundaries (in key order, all within
    ``[key_min, key_max]``): ``key_min`` starts the first, each later boundary the next,
    and the last ends at ``key_max`` inclusive.

    The ranges are fixed at planning time, so every chunk task reads a window that does
    not move under it, and a redelivered chunk reads the same keys again; a row written
    later with a key above ``key_max`` is read by no chunk of this run.
    """
    if span.rows == 0 or span.key_min is None or span.key_max is None:
        return []
    # The first boundary is the first row's key: key_min, unless that row went since the
    # span was read; key_min starts the plan either way. A repeat would be an empty chunk.
    lows: list[ChunkKey] = [span.key_min]
    for key in boundaries[1:]:
        if key != lows[-1]:
            lows.append(key)
    highs: list[ChunkKey] = [*lows[1:], span.key_max]
    last = len(lows) - 1
    return [
        ChunkRange(index=index, key_lo=low, key_hi=high, key_hi_inclusive=index == last)
        for index, (low, high) in enumerate(zip(lows, highs, strict=True))
    ]


def describe_key_range(key_lo: ChunkKey, key_hi: ChunkKey, key_hi_inclusive: bool) -> str:
    """A chunk's keys for people, without spaces (a table's cell): the first and last
    integer key, ``1..500``; for other keys ``[lo,hi)``, or ``[lo,hi]`` for a plan's last
    chunk."""
    if isinstance(key_lo, int) and isinstance(key_hi, int):
        return f"{key_lo}..{key_hi if key_hi_inclusive else key_hi - 1}"
    return f"[{key_lo},{key_hi}{']' if key_hi_inclusive else ')'}"
