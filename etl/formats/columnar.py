"""The columnar fast path: records made a whole batch at once, in Arrow, and the Arrow
side of typed schemas.

On PostgreSQL a chunk arrives as Arrow tables of text, as COPY renders each value (an
integer key column as int64, any other key as text, NULL as null). Then:

- a SQL-only pipeline (no transform: its query made the records) has the schema's
  columns cast to their types (``sql_table``), with no Python object per row;
- a pipeline with a *columnar transform* beside its row transform has it return the
  records of the rows it is sure of, with a mask saying which rows those are. Every
  other row (anything unusual, and every row to be rejected) goes through the row
  transform, one row at a time (``transform_table``). So the two paths cannot disagree
  about what is rejected or why, and the fast one only has to be right about plain
  rows, which the integration suite checks against the row transform.

Either way the records are checked against the schema and cast to its Arrow types
(``conform_table``; ``arrow_type`` is each logical type's Arrow and Parquet type), and
``text_columns`` / ``plain_records`` give them back as JSON Lines carries them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from etl.domain.errors import SchemaMismatch
from etl.domain.schema import LogicalType, Schema, json_text, parse_schema
from etl.domain.transform import Transform

if TYPE_CHECKING:
    import pyarrow as pa

# table of source text -> (records of the plain rows, in order; mask of the plain rows)
ColumnarTransform = Callable[["pa.Table"], "tuple[pa.Table, pa.Array]"]
# A schema as a pipeline declares it, or parsed.
SchemaLike = Schema | Sequence[tuple[str, str]]


def as_schema(schema: SchemaLike) -> Schema:
    """A declaration parsed (a Schema as it is)."""
    return schema if isinstance(schema, Schema) else parse_schema(schema)


def arrow_type(kind: LogicalType) -> pa.DataType:
    """The Arrow (and so Parquet) type of a logical type: int64, float64, decimal128(p,s),
    string, bool, date32, timestamp[us, UTC], timestamp[us] (no zone), and Arrow's JSON
    extension type (Parquet's JSON logical type: UTF-8 JSON text)."""
    import pyarrow as pa

    if kind.name == "decimal":
        return pa.decimal128(kind.precision or 1, kind.scale or 0)
    return {
        "integer": pa.int64(),
        "float": pa.float64(),
        "string": pa.string(),
        "boolean": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "timestamp_ntz": pa.timestamp("us"),
        "json": pa.json_(),
    }[kind.name]


def arrow_schema(schema: SchemaLike) -> pa.Schema:
    """The Arrow schema of a pipeline's output schema."""
    import pyarrow as pa

    return pa.schema([(field.name, arrow_type(field.type)) for field in as_schema(schema).fields])


# The logical types JSON Lines and CSV carry as text (Schema.conform's values), and so a
# batch of conformed records holds as strings before its cast to the Arrow types (a
# timestamp is a datetime in UTC there, read by Arrow as it is).
_AS_TEXT = ("decimal", "date", "timestamp_ntz", "json")


def records_table(records: list[dict[str, Any]], schema: SchemaLike) -> pa.Table:
    """Records already conformed (Schema.conform) as an Arrow table of the schema's types."""
    import pyarrow as pa

    schema = as_schema(schema)
    target = arrow_schema(schema)
    carried = pa.schema(
        [
            (field.name, pa.string() if field.type.name in _AS_TEXT else arrow_type(field.type))
            for field in schema.fields
        ]
    )
    return pa.Table.from_pylist(records, schema=carried).cast(target)


def conform_table(table: pa.Table, schema: SchemaLike) -> pa.Table:
    """A table of records (a columnar transform's) checked against the schema and cast
    to its Arrow types, columns in schema order. SchemaMismatch for a column too many or
    too few, a column of a type its field does not take, or a value that does not cast
    (text that is not a timestamp, a decimal with too many digits, NaN in a float)."""
    import pyarrow as pa

    schema = as_schema(schema)
    if table.schema.equals(_arrow_schema_of(schema), check_metadata=False):
        for name in schema.of_kind("float"):
            _check_finite(schema, name, table[name])
        return table  # already as it is written (our own tables)
    extra = [name for name in table.column_names if name not in schema.types]
    if extra:
        column = table[extra[0]]
        raise schema.mismatch(
            extra[0],
            "is not in the schema (declare it, or leave it out of the records)",
            column[0].as_py() if len(column) else "(an empty column)",
        )
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise schema.mismatch(
            missing[0], "is missing from the records", f"columns {table.column_names}"
        )
    columns = [
        _conform_column(schema, field.name, field.type, table[field.name])
        for field in schema.fields
    ]
    return pa.table(columns, schema=_arrow_schema_of(schema))


def _arrow_schema_of(schema: Schema) -> pa.Schema:
    # Made once per schema: a writer checks every table it is given against it.
    cached = _ARROW_SCHEMAS.get(schema)
    if cached is None:
        cached = _ARROW_SCHEMAS[schema] = arrow_schema(schema)
    return cached


_ARROW_SCHEMAS: dict[Schema, pa.Schema] = {}


def _takes(kind: LogicalType, arrow: pa.DataType) -> bool:
    """Whether a column of ``arrow`` values may be cast to the field's type."""
    import pyarrow as pa

    types = pa.types
    if types.is_null(arrow):
        return True
    text = bool(types.is_string(arrow) or types.is_large_string(arrow))
    name = kind.name
    if name == "integer":
        return bool(types.is_integer(arrow))
    if name == "float":
        return bool(types.is_floating(arrow) or types.is_integer(arrow))
    if name == "decimal":
        return bool(types.is_decimal(arrow) or types.is_integer(arrow) or text)
    if name == "string":
        return text
    if name == "boolean":
        return bool(types.is_boolean(arrow))
    if name == "date":
        return bool(types.is_date(arrow) or text)
    if name == "timestamp":
        return (types.is_timestamp(arrow) and arrow.tz is not None) or text
    if name == "timestamp_ntz":
        return (types.is_timestamp(arrow) and arrow.tz is None) or text
    return text or isinstance(arrow, pa.JsonType) or bool(types.is_nested(arrow))  # json


def _conform_column(
    schema: Schema, name: str, kind: LogicalType, column: Any, from_text: bool = False
) -> Any:
    """A column cast to its field's Arrow type; ``from_text``: any type read from text
    (COPY's), else only the Arrow types _takes allows."""
    import pyarrow as pa

    target = arrow_type(kind)
    if column.type.equals(target):
        if kind.name == "float":
            _check_finite(schema, name, column)
        return column
    if not (from_text and pa.types.is_string(column.type)) and not _takes(kind, column.type):
        example = next((v for v in column.to_pylist() if v is not None), None)
        raise schema.mismatch(name, f"is an Arrow column of {column.type}", example)
    if kind.name == "json":
        if isinstance(column.type, pa.JsonType):
            return column  # JSON text already
        # JSON text (or nested values) in the canonical form: one Python value each.
        texts = []
        for value in column.to_pylist():
            try:
                loaded = json.loads(value) if isinstance(value, str) else value
                texts.append(None if value is None else json_text(loaded))
            except (TypeError, ValueError) as exc:
                raise schema.mismatch(name, f"is not JSON text ({exc})", value) from None
        return pa.array(texts, pa.string()).cast(target)
    try:
        cast = column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise schema.mismatch(
            name, f"does not cast to {target}: {exc}", _failing_value(column, target)
        ) from None
    if kind.name == "float":
        _check_finite(schema, name, cast)
    return cast


def _check_finite(schema: Schema, name: str, column: Any) -> None:
    import pyarrow.compute as pc

    finite = pc.is_finite(column)
    if finite.null_count < len(column) and not pc.all(finite).as_py():
        bad = column.filter(pc.invert(pc.fill_null(finite, True)))
        raise schema.mismatch(
            name, "is not a finite number (JSON has no NaN or infinity)", bad[0].as_py()
        )


def _failing_value(column: Any, target: pa.DataType) -> Any:
    """The first value of ``column`` that does not cast to ``target`` (the error's example)."""
    import pyarrow as pa

    for value in column.to_pylist():
        try:
            pa.array([value], column.type).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return value
    return None


def sql_table(table: pa.Table, schema: SchemaLike) -> pa.Table:
    """A SQL-only pipeline's records: the schema's columns of a batch of COPY's text
    (PostgreSQL's own rendering, UTC, ISO dates) cast to their types, in Arrow; no Python
    object per row but for json (each value parsed once, to write it in one form).

    COPY prints booleans as ``t``/``f``, an instant as ``2026-01-01 00:00:07.5+00``, a
    time without a zone without the offset; a value that does not read as its field's
    type (text in an integer field, a zone-less time in a timestamp field, NaN in a
    float) is a bug in the query: SchemaMismatch naming the field and the value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = as_schema(schema)
    columns = []
    for field in schema.fields:
        column = table[field.name]
        kind = field.type
        if kind.name == "boolean" and pa.types.is_string(column.type):
            plain = pc.is_in(column, value_set=pa.array(["t", "f"]))
            if pc.sum(pc.invert(plain)).as_py() != column.null_count:
                bad = column.filter(pc.and_(pc.is_valid(column), pc.invert(plain)))
                raise schema.mismatch(
                    field.name, "is not a boolean (t or f) as COPY prints it", bad[0].as_py()
                )
            column = pc.equal(column, "t")
        try:
            columns.append(_conform_column(schema, field.name, kind, column, from_text=True))
        except SchemaMismatch as mismatch:
            if kind.name == "timestamp" and "zone" in mismatch.problem:
                raise SchemaMismatch(
                    schema.pipeline,
                    field.name,
                    "(timestamp) has no zone in the query's result (a timestamp without "
                    "time zone column): declare the field timestamp_ntz, or give the query "
                    "`column AT TIME ZONE 'UTC'`",
                    mismatch.example,
                ) from None
            raise
    return pa.table(columns, schema=_arrow_schema_of(schema))


def text_columns(table: pa.Table, schema: SchemaLike) -> dict[str, Any]:
    """Each column of a conformed table as JSON Lines and CSV carry it: decimals, dates
    and times as their text (as Schema.conform makes them), json as its JSON text;
    numbers and booleans as they are."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = as_schema(schema)
    found: dict[str, Any] = {}
    for field in schema.fields:
        column = table[field.name]
        name = field.type.name
        if name in ("timestamp", "timestamp_ntz"):
            # "2026-01-01 00:00:07.500000": a T, no fraction when it is zero (as Python's
            # isoformat prints it), and a Z for an instant. (Printed as zone-less UTC: an
            # instant printed with its zone costs a time zone lookup a value.)
            text = pc.binary_replace_slice(
                column.cast(pa.timestamp("us")).cast(pa.string()), 10, 11, "T"
            )
            column = pc.replace_substring(text, ".000000", "")
            if name == "timestamp":
                column = pc.binary_join_element_wise(column, "Z", "")
        elif name in ("decimal", "date", "json"):
            column = column.cast(pa.string())
        found[field.name] = column
    return found


def plain_records(table: pa.Table, schema: SchemaLike) -> list[dict[str, Any]]:
    """The records of a conformed table as JSON Lines reads back: text for decimals,
    dates and times, json fields as their values."""
    schema = as_schema(schema)
    columns = text_columns(table, schema)
    json_fields = schema.of_kind("json")
    listed = {name: column.to_pylist() for name, column in columns.items()}
    for name in json_fields:
        listed[name] = [None if v is None else json.loads(v) for v in listed[name]]
    names = list(listed)
    return [dict(zip(names, values, strict=True)) for values in zip(*listed.values(), strict=True)]


def transform_table(
    table: pa.Table,
    columnar: ColumnarTransform,
    row_transform: Transform,
    schema: SchemaLike,
) -> tuple[pa.Table, Counter[str]]:
    """Transform a batch: plain rows in Arrow, the rest row by row; records stay in the
    batch's order. Returns the records, checked against the schema and in its Arrow
    types, and the rejected rows counted by reason. SchemaMismatch for records of
    either transform that do not match the schema."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = as_schema(schema)
    plain_records, plain = columnar(table)
    plain_records = conform_table(plain_records, schema)
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
    merged = pa.concat_tables([plain_records, records_table(schema.conform(records), schema)])
    order = pa.concat_arrays(
        [pc.indices_nonzero(plain).cast(pa.int64()), pa.array(positions, pa.int64())]
    )
    return merged.take(pc.sort_indices(order)), rejected


# PostgreSQL's text of an instant as COPY prints it in a session whose TimeZone is UTC
# (read_range_text sets it): 2026-01-01 00:00:07.5+00. Years 1 to 9999 only, those a
# Python datetime holds: Arrow would read year 0, which the row path rejects.
_UTC_TIMESTAMP_TEXT = (
    r"^(?:[1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?\+00$"
)


def utc_timestamps(column: pa.Array) -> tuple[pa.Array, pa.Array]:
    """PostgreSQL's text of a UTC timestamptz (``2026-01-01 00:00:07.5+00``) as Arrow
    timestamps (``timestamp[us, UTC]``, the schema's ``timestamp``), and where it was read:
    a mask, false for NULL and for any other text (a zone, a ``T``, more digits), which a
    columnar transform leaves to its row transform.

    Parsed by Arrow's cast, in C: about 1 ms for 50,000 values, where the text cut out by
    a regular expression's groups and joined as Python prints it cost 12, and was parsed
    again by the schema check. A batch holding text of that form that is no time (hour 24,
    30 February) is left to the row transform whole: Arrow's cast refuses a whole column
    for one such value, and the row transform rejects it with its reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    plain = pc.fill_null(pc.match_substring_regex(column, _UTC_TIMESTAMP_TEXT), False)
    target = pa.timestamp("us", tz="UTC")
    try:
        return pc.if_else(plain, column, None).cast(target), plain
    except pa.ArrowInvalid:
        none = pa.nulls(len(column), target)
        return none, pa.array([False] * len(column), pa.bool_())
