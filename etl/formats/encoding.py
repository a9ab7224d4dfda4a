"""Encoding records into part files: deterministic bytes, counted and hashed as written.

Each writer is given the pipeline's schema and checks what it is given against it
(Schema.conform for records, conform_table for Arrow tables): a record that does not
match raises SchemaMismatch before a byte of it is written. How each logical type is
carried in each format is in etl/domain/schema.py (JSON Lines, CSV) and
etl/formats/columnar.py (Parquet), and for consumers in docs/consumers.md.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson
from zlib_ng import zlib_ng

from etl.domain.schema import Schema, parse_schema, utc_text
from etl.formats.columnar import (
    SchemaLike,
    arrow_schema,
    as_schema,
    conform_table,
    plain_records,
    records_table,
    text_columns,
)

if TYPE_CHECKING:
    import pyarrow as pa

# Every output format, with its content type.
FORMATS = {
    "jsonl.gz": "application/gzip",
    "csv.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}
# The compression level each format uses unless the pipeline says otherwise (gzip 1..9;
# zstd inside parquet 1..22), and the range it accepts. gzip 5, not zlib's customary 6:
# zlib-ng at 6 takes 1.7 times as long for 2% fewer bytes (one orders chunk's 9 MB of
# JSON Lines: 60 ms to 884 kB at 6, 35 ms to 902 kB at 5; docs/performance.md).
DEFAULT_COMPRESSION = {"jsonl.gz": 5, "csv.gz": 5, "parquet": 3}
COMPRESSION_RANGE = {"jsonl.gz": (1, 9), "csv.gz": (1, 9), "parquet": (1, 22)}


@dataclass(frozen=True)
class PartStats:
    """What was written: row count, compressed size and sha256 of the compressed bytes."""

    rows: int
    bytes: int
    sha256: str


class _HashingSink:
    """A write-only file that hashes and counts what passes through to ``target``."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()

    def close(self) -> None:
        # Writers close their stream when they finish; the part stays open for upload.
        self.flush()

    @property
    def closed(self) -> bool:
        return False


class _GzipStream:
    """A gzip stream into a sink, compressed by zlib-ng: zlib's format and levels, in C,
    1.4 times zlib's speed at level 6 here (ISA-L is faster still but has no level above
    3). Deterministic: the header holds no time and no file name."""

    def __init__(self, sink: _HashingSink, level: int) -> None:
        self._sink = sink
        self._compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 31)  # 31: gzip

    def write(self, data: bytes) -> None:
        if compressed := self._compressor.compress(data):
            self._sink.write(compressed)

    def close(self) -> None:
        self._sink.write(self._compressor.flush())


class JsonLinesGzipWriter:
    """Writes records as gzip-compressed JSON Lines, keys in schema order.

    The output is byte-for-byte deterministic for the same records (gzip mtime 0, no
    file name in the header, stable key order), so a chunk written twice yields the same
    object and the same sha256. Without a schema (tests of the encoding alone) records
    are written as they are, unchecked.
    """

    extension = "jsonl.gz"

    def __init__(
        self,
        target: IO[bytes],
        compresslevel: int = DEFAULT_COMPRESSION["jsonl.gz"],
        schema: SchemaLike | None = None,
    ) -> None:
        self._sink = _HashingSink(target)
        self._gzip = _GzipStream(self._sink, compresslevel)
        self._rows = 0
        self._schema = None if schema is None else as_schema(schema)
        # A json field holds JSON text after Schema.conform, written as it is (not quoted).
        self._raw = () if self._schema is None else self._schema.of_kind("json")

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one JSON object a line."""
        if self._schema is not None:
            records = self._schema.conform(records)
        elif not isinstance(records, list):
            records = list(records)
        if not records:
            return
        if self._raw:  # json fields: their JSON text goes in as it is
            marked = [_with_json_text(record, self._raw) for record in records]
            self._gzip.write(b"".join([orjson.dumps(record, option=_LINE) for record in marked]))
        else:
            self._gzip.write(_flat_json_lines(records))
        self._rows += len(records)

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records: the same bytes as write_records, built in
        Arrow (a column of floats, or of text that needs more escaping than quotes and
        backslashes, through Python's encoder)."""
        if self._schema is not None:
            table = conform_table(table, self._schema)
            columns = text_columns(table, self._schema)
        else:
            columns = {name: table[name] for name in table.column_names}
        lines = _json_lines(columns, table.num_rows, self._raw)
        if lines:
            self._gzip.write(lines)
            self._rows += table.num_rows

    def close(self) -> PartStats:
        """Finish the gzip stream and return what was written."""
        self._gzip.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


# orjson prints a datetime in UTC as schema.utc_text does ("...Z"; microseconds only when
# not zero): a timestamp after Schema.conform is such a datetime.
_OPTIONS = orjson.OPT_UTC_Z
# Each record a line: orjson's compact JSON, UTF-8, "\n" after it.
_LINE = orjson.OPT_APPEND_NEWLINE | _OPTIONS


def _dumps(value: Any) -> str:
    """A value as JSON Lines writes it (orjson: compact, UTF-8, no NaN)."""
    return orjson.dumps(value, option=_OPTIONS).decode()


def _flat_json_lines(records: list[dict[str, Any]]) -> bytes:
    """Records whose values are all scalars, one compact JSON object a line.

    orjson encodes the whole list in one call, then each ``},{"`` becomes ``}\n{"``: in
    a list of flat objects that sequence occurs only between two records, because a
    quote inside a string is always escaped and no value is an object. One call costs
    about 0.2 us a record in a worker; one call a record cost 3 to 6 us there (each
    record's own buffer, allocated and resized).
    """
    return orjson.dumps(records, option=_OPTIONS)[1:-1].replace(b'},{"', b'}\n{"') + b"\n"


def _with_json_text(record: dict[str, Any], raw: Sequence[str]) -> dict[str, Any]:
    """The record with its json fields' JSON text marked to be written as it is."""
    return {
        name: orjson.Fragment(value) if name in raw and value is not None else value
        for name, value in record.items()
    }


@dataclass(frozen=True)
class _Escapes:
    """What a column of text holds that JSON escapes."""

    control: bool  # a control character (below 0x20): escaped value by value
    quote_or_backslash: bool  # escaped in Arrow


def _escapes(column: Any) -> _Escapes:
    """What JSON escapes in a column of text, read from its UTF-8 bytes at once (every
    byte of a multi-byte character is 0x80 or above): a scan of bytes, where a regular
    expression a value cost 3 to 4 times as much."""
    import pyarrow as pa
    import pyarrow.compute as pc

    quote_and_backslash = pa.array([0x22, 0x5C], pa.uint8())
    control = quote_or_backslash = False
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        data = chunk.buffers()[2]
        span = _value_span(chunk)
        if data is None or span.start == span.stop:
            continue
        values = pa.Array.from_buffers(
            pa.uint8(), span.stop - span.start, [None, data], offset=span.start
        )
        control = control or pc.min(values).as_py() < 0x20
        quote_or_backslash = (
            quote_or_backslash or pc.any(pc.is_in(values, value_set=quote_and_backslash)).as_py()
        )
    return _Escapes(control, quote_or_backslash)


def _json_lines(columns: dict[str, Any], rows: int, raw: Sequence[str] = ()) -> bytes:
    """Each row as write_records writes its record (orjson: compact, UTF-8), a line
    each, built in Arrow from its columns (those of ``raw`` hold JSON text, written as it
    is); a column of floats, nested values or text needing escapes beyond quotes and
    backslashes is encoded value by value, the same bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if rows == 0:
        return b""
    pieces: list[Any] = []
    for position, (name, column) in enumerate(columns.items()):
        if name in raw:
            text = column.cast(pa.string())
        elif pa.types.is_integer(column.type):
            text = pc.cast(column, pa.string())
        elif pa.types.is_boolean(column.type):
            text = pc.if_else(column, "true", "false")
        elif pa.types.is_string(column.type) and not (escapes := _escapes(column)).control:
            if escapes.quote_or_backslash:
                column = pc.replace_substring(column, "\\", "\\\\")
                column = pc.replace_substring(column, '"', '\\"')
            text = pc.binary_join_element_wise('"', column, '"', "")
        else:  # floats, nested values, control characters: Python's own formatting
            text = pa.array(
                [None if value is None else _dumps(value) for value in column.to_pylist()],
                pa.string(),
            )
        opening = "{" if position == 0 else ","
        pieces += [opening + _dumps(name) + ":", pc.fill_null(text, "null")]
    lines = pc.binary_join_element_wise(*pieces, "}\n", "")
    chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
    return b"".join(chunk.buffers()[2].to_pybytes()[_value_span(chunk)] for chunk in chunks)


def _value_span(array: pa.Array) -> slice:
    """Where a string array's values lie in its data buffer (int32 offsets)."""
    offsets = memoryview(array.buffers()[1]).cast("i")
    return slice(offsets[array.offset], offsets[array.offset + len(array)])


class PartWriter(Protocol):
    """What every format's writer does."""

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records."""
        ...

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records (the columnar path)."""
        ...

    def close(self) -> PartStats:
        """Finish the part and return what was written."""
        ...


class CsvGzipWriter:
    """Writes records as gzip-compressed CSV with a header, columns in schema order.

    Deterministic like JsonLinesGzipWriter. A null is an empty field, so CSV cannot tell
    an empty string from a null: a reader gets None for both. Values as JSON Lines
    carries them (etl/domain/schema.py): booleans ``true``/``false``, json as its text.
    """

    def __init__(
        self,
        target: IO[bytes],
        schema: SchemaLike,
        compresslevel: int = DEFAULT_COMPRESSION["csv.gz"],
    ) -> None:
        self._sink = _HashingSink(target)
        self._gzip = _GzipStream(self._sink, compresslevel)
        self._schema = as_schema(schema)
        self._columns = list(self._schema.names)
        self._rows = 0
        self._write_lines([self._columns])

    def _write_lines(self, rows: Iterable[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._gzip.write(buffer.getvalue().encode("utf-8"))

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one CSV line each."""
        rows = [
            [_csv_value(value) for value in record.values()]
            for record in self._schema.conform(records)
        ]
        if rows:
            self._write_lines(rows)
            self._rows += len(rows)

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records, through Python's csv module like any other."""
        columns = text_columns(conform_table(table, self._schema), self._schema)
        listed = [column.to_pylist() for column in columns.values()]
        rows = [[_csv_value(value) for value in row] for row in zip(*listed, strict=True)]
        if rows:
            self._write_lines(rows)
            self._rows += len(rows)

    def close(self) -> PartStats:
        """Finish the gzip stream and return what was written."""
        self._gzip.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is datetime:  # a timestamp, in UTC after Schema.conform
        return utc_text(value)
    return value


# A Parquet row group holds at least this many rows (but a part's last): readers skip
# and decode by row group, and COPY's blocks of about 8,000 rows make groups too small.
PARQUET_ROW_GROUP_ROWS = 65_536


class ParquetPartWriter:
    """Writes records as a Parquet file (zstd), in row groups of at least
    PARQUET_ROW_GROUP_ROWS rows: what it is given is held (as Arrow, conformed) until
    there are that many.

    Deterministic for the same records and pyarrow version."""

    def __init__(self, target: IO[bytes], schema: SchemaLike, compression_level: int = 3) -> None:
        import pyarrow.parquet as pq

        self._sink = _HashingSink(target)
        self._record_schema = as_schema(schema)
        self._schema = arrow_schema(self._record_schema)
        self._writer = pq.ParquetWriter(
            self._sink,
            self._schema,
            compression="zstd",
            compression_level=compression_level,
        )
        self._rows = 0
        self._held: list[pa.Table] = []
        self._held_rows = 0

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records."""
        batch = self._record_schema.conform(records)
        if batch:
            self._hold(records_table(batch, self._record_schema))

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records."""
        if table.num_rows:
            self._hold(conform_table(table, self._record_schema))

    def _hold(self, table: pa.Table) -> None:
        self._held.append(table)
        self._held_rows += table.num_rows
        self._rows += table.num_rows
        if self._held_rows >= PARQUET_ROW_GROUP_ROWS:
            self._write_held()

    def _write_held(self) -> None:
        import pyarrow as pa

        if self._held:
            group = pa.concat_tables(self._held)
            self._writer.write_table(group, row_group_size=group.num_rows)
            self._held, self._held_rows = [], 0

    def close(self) -> PartStats:
        """Write the rows held and the footer, and return what was written."""
        self._write_held()
        self._writer.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


def make_writer(
    output_format: str,
    target: IO[bytes],
    schema: SchemaLike,
    compression_level: int | None = None,
) -> PartWriter:
    """The writer for a format, at its default compression level unless one is given.
    Every record and table it is given is checked against ``schema`` (a pipeline's
    ``record_schema``, so that a mismatch names the pipeline; or a declaration)."""
    level = compression_level or DEFAULT_COMPRESSION[output_format]
    if output_format == "jsonl.gz":
        return JsonLinesGzipWriter(target, compresslevel=level, schema=schema)
    if output_format == "csv.gz":
        return CsvGzipWriter(target, schema, compresslevel=level)
    if output_format == "parquet":
        return ParquetPartWriter(target, schema, compression_level=level)
    raise ValueError(f"unknown output format {output_format!r}")


def read_part(
    data: bytes | IO[bytes], output_format: str, schema: Sequence[tuple[str, str]] = ()
) -> Iterator[dict[str, Any]]:
    """The records of a part, whatever its format, as JSON Lines reads back: numbers and
    booleans as such, decimals, dates and times as their text, json fields as their
    values (CSV's text typed by the schema; older manifests' type names read too)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if output_format == "jsonl.gz":
        with gzip.GzipFile(fileobj=stream, mode="rb") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    elif output_format == "csv.gz":
        kinds = {name: _read_kind(kind) for name, kind in schema}
        with gzip.GzipFile(fileobj=stream, mode="rb") as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            for row in reader:
                yield {
                    name: _typed(value, kinds.get(name, "string")) for name, value in row.items()
                }
    elif output_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(stream)
        declared = _parquet_schema(table.schema_arrow, schema)
        for batch in table.iter_batches():
            yield from plain_records(batch, declared)
    else:
        raise ValueError(f"unknown output format {output_format!r}")


def _read_kind(spelled: str) -> str:
    """A manifest's type as a logical type's name (string when it names none)."""
    try:
        return parse_schema([("field", spelled)]).fields[0].type.name
    except ValueError:
        return {"bigint": "integer", "number": "float"}.get(spelled, "string")


def _parquet_schema(arrow: pa.Schema, declared: Sequence[tuple[str, str]]) -> Schema:
    """The logical types of a Parquet file's columns, from the file itself (older parts
    wrote times as text: read as text)."""
    import pyarrow as pa

    kinds = {name: _read_kind(kind) for name, kind in declared}
    fields = []
    for column in arrow:
        kind = column.type
        if isinstance(kind, pa.JsonType):
            name = "json"
        elif pa.types.is_decimal(kind):
            name = f"decimal({kind.precision},{kind.scale})"
        elif pa.types.is_timestamp(kind):
            name = "timestamp" if kind.tz else "timestamp_ntz"
        elif pa.types.is_date(kind):
            name = "date"
        elif pa.types.is_integer(kind):
            name = "integer"
        elif pa.types.is_floating(kind):
            name = "float"
        elif pa.types.is_boolean(kind):
            name = "boolean"
        else:
            name = "json" if kinds.get(column.name) == "json" else "string"
        fields.append((column.name, name))
    return parse_schema(fields)


def _typed(value: str, kind: str) -> Any:
    if value == "":
        return None
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "boolean":
        return value == "true"
    if kind == "json":
        return json.loads(value)
    return value
