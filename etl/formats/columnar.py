"""The columnar fast path: a pipeline's transform over a whole batch at once, in Arrow.

A pipeline may give a *columnar transform* beside its row transform. It gets a batch of
source rows as an Arrow table of text, as PostgreSQL's COPY renders each value (an
integer key column as int64, any other key as text, NULL as null), and returns the
records of the rows it is sure of, with a mask saying which rows those are. Every other
row (anything unusual, and every row to be rejected) goes through the row transform, one
row at a time. So the two paths cannot disagree about what is rejected or why, and the
fast one only has to be right about plain rows, which the integration suite checks
against the row transform.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from etl.domain.transform import Transform

if TYPE_CHECKING:
    import pyarrow as pa

# table of source text -> (records of the plain rows, in order; mask of the plain rows)
ColumnarTransform = Callable[["pa.Table"], "tuple[pa.Table, pa.Array]"]

# The schema's type names as Arrow types (timestamps stay the ISO strings transforms
# produce, so a part reads back exactly as it was written).
_ARROW_TYPES = {
    "integer": "int64",
    "bigint": "int64",
    "number": "float64",
    "float": "float64",
    "boolean": "bool",
}


def arrow_schema(schema: Sequence[tuple[str, str]]) -> pa.Schema:
    """The Arrow schema of a pipeline's output schema."""
    import pyarrow as pa

    return pa.schema(
        [(name, pa.type_for_alias(_ARROW_TYPES.get(kind, "string"))) for name, kind in schema]
    )


def transform_table(
    table: pa.Table,
    columnar: ColumnarTransform,
    row_transform: Transform,
    output_schema: pa.Schema,
) -> tuple[pa.Table, Counter[str]]:
    """Transform a batch: plain rows in Arrow, the rest row by row; records stay in the
    batch's order. Returns the records and the rejected rows counted by reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain_records, plain = columnar(table)
    plain_records = plain_records.cast(output_schema)
    if isinstance(plain, pa.ChunkedArray):  # a table's columns are chunked
        plain = plain.combine_chunks()
    rejected: Counter[str] = Counter()
    if plain.false_count == 0:
        return plain_records, rejected
    others = pc.indices_nonzero(pc.invert(plain)).to_pylist()
    positions: list[int] = []
    records: list[dict[str, Any]] = []
    # One row at a time, so each record keeps the position of the row it came from.
    for position, row in zip(others, table.take(others).to_pylist(), strict=True):
        result = row_transform([row])
        positions += [position] * len(result.records)
        records += result.records
        rejected.update(result.rejected_by_reason())
    merged = pa.concat_tables([plain_records, pa.Table.from_pylist(records, schema=output_schema)])
    order = pa.concat_arrays(
        [pc.indices_nonzero(plain).cast(pa.int64()), pa.array(positions, pa.int64())]
    )
    return merged.take(pc.sort_indices(order)), rejected


def iso_utc_text(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    """PostgreSQL's text of a UTC timestamptz (``2026-01-01 00:00:07.5+00``) as Python's
    ``isoformat`` with ``Z`` (``2026-01-01T00:00:07.500000Z``), and where it could be read."""
    import pyarrow.compute as pc

    parts = pc.extract_regex(
        column, r"^(?P<day>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d)(?P<fraction>\.\d{1,6})?\+00$"
    )
    fraction = pc.struct_field(parts, "fraction")
    # Python prints microseconds in full, and none at all when they are zero.
    fraction = pc.if_else(pc.equal(fraction, ""), "", pc.utf8_rpad(fraction, 7, "0"))
    text = pc.binary_join_element_wise(
        pc.struct_field(parts, "day"), "T", pc.struct_field(parts, "time"), fraction, "Z", ""
    )
    return text, pc.is_valid(parts)
