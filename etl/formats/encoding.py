"""Encoding records into part files: deterministic bytes, counted and hashed as written."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol

from etl.formats.columnar import arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa

# Every output format, with its content type.
FORMATS = {
    "jsonl.gz": "application/gzip",
    "csv.gz": "application/gzip",
    "parquet": "application/vnd.apache.parquet",
}
# The compression level each format uses unless the pipeline says otherwise (gzip 1..9;
# zstd inside parquet 1..22), and the range it accepts.
DEFAULT_COMPRESSION = {"jsonl.gz": 6, "csv.gz": 6, "parquet": 3}
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


class JsonLinesGzipWriter:
    """Writes records as gzip-compressed JSON Lines.

    The output is byte-for-byte deterministic for the same records (gzip mtime 0, no
    file name in the header, stable key order), so a chunk written twice yields the same
    object and the same sha256.
    """

    extension = "jsonl.gz"

    def __init__(self, target: IO[bytes], compresslevel: int = 6) -> None:
        self._sink = _HashingSink(target)
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._sink, compresslevel=compresslevel, mtime=0
        )
        self._rows = 0

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one JSON object a line."""
        lines = [
            json.dumps(record, separators=(",", ":"), ensure_ascii=False) for record in records
        ]
        if lines:
            self._gzip.write(("\n".join(lines) + "\n").encode("utf-8"))
            self._rows += len(lines)

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records: the same bytes as write_records, built in
        Arrow when every column is text, integer or boolean and no text needs more
        escaping than quotes and backslashes."""
        lines = _json_lines(table)
        if lines is None:
            self.write_records(table.to_pylist())
        elif lines:
            self._gzip.write(lines)
            self._rows += table.num_rows

    def close(self) -> PartStats:
        """Finish the gzip stream and return what was written."""
        self._gzip.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


# What json.dumps escapes beyond quotes and backslashes: the control characters.
_NEEDS_ESCAPE = "[\\x00-\\x1f]"


def _json_lines(table: pa.Table) -> bytes | None:
    """json.dumps(record, separators=(",", ":"), ensure_ascii=False) of each row, a line
    each, built in Arrow; None when a column or a value needs Python's encoder."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return b""
    pieces: list[Any] = []
    for position, name in enumerate(table.column_names):
        column = table[name]
        if pa.types.is_integer(column.type):
            text = pc.cast(column, pa.string())
        elif pa.types.is_boolean(column.type):
            text = pc.if_else(column, "true", "false")
        elif pa.types.is_string(column.type):
            if pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
                return None
            escaped = pc.replace_substring(pc.replace_substring(column, "\\", "\\\\"), '"', '\\"')
            text = pc.binary_join_element_wise('"', escaped, '"', "")
        else:
            return None  # floats, dates, nested values: Python's own formatting
        opening = "{" if position == 0 else ","
        pieces += [opening + json.dumps(name, ensure_ascii=False) + ":", pc.fill_null(text, "null")]
    lines = pc.binary_join_element_wise(*pieces, "}\n", "")
    return b"".join(chunk.buffers()[2].to_pybytes()[_value_span(chunk)] for chunk in lines.chunks)


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
    an empty string from a null: a reader gets None for both.
    """

    def __init__(self, target: IO[bytes], columns: Sequence[str], compresslevel: int = 6) -> None:
        self._sink = _HashingSink(target)
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._sink, compresslevel=compresslevel, mtime=0
        )
        self._columns = list(columns)
        self._rows = 0
        self._write_lines([self._columns])

    def _write_lines(self, rows: Iterable[Sequence[Any]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        self._gzip.write(buffer.getvalue().encode("utf-8"))

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records, one CSV line each."""
        rows = [[_csv_value(record.get(name)) for name in self._columns] for record in records]
        if rows:
            self._write_lines(rows)
            self._rows += len(rows)

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records, through Python's csv module like any other."""
        self.write_records(table.to_pylist())

    def close(self) -> PartStats:
        """Finish the gzip stream and return what was written."""
        self._gzip.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value


class ParquetPartWriter:
    """Writes records as a Parquet file (zstd), one row group per batch of records.

    Deterministic for the same records and pyarrow version."""

    def __init__(
        self, target: IO[bytes], schema: Sequence[tuple[str, str]], compression_level: int = 3
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self._sink = _HashingSink(target)
        self._schema = arrow_schema(schema)
        self._writer = pq.ParquetWriter(
            self._sink,
            self._schema,
            compression="zstd",
            compression_level=compression_level,
        )
        self._rows = 0

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records as one row group."""
        batch = list(records)
        if batch:
            table = self._pa.Table.from_pylist(batch, schema=self._schema)
            self._writer.write_table(table)
            self._rows += len(batch)

    def write_table(self, table: pa.Table) -> None:
        """Append an Arrow table of records as one row group."""
        if table.num_rows:
            self._writer.write_table(table.cast(self._schema))
            self._rows += table.num_rows

    def close(self) -> PartStats:
        """Write the footer and return what was written."""
        self._writer.close()
        return PartStats(rows=self._rows, bytes=self._sink.size, sha256=self._sink.hash.hexdigest())


def make_writer(
    output_format: str,
    target: IO[bytes],
    schema: Sequence[tuple[str, str]],
    compression_level: int | None = None,
) -> PartWriter:
    """The writer for a format, at its default compression level unless one is given."""
    level = compression_level or DEFAULT_COMPRESSION[output_format]
    if output_format == "jsonl.gz":
        return JsonLinesGzipWriter(target, compresslevel=level)
    if output_format == "csv.gz":
        return CsvGzipWriter(target, [name for name, _ in schema], compresslevel=level)
    if output_format == "parquet":
        return ParquetPartWriter(target, schema, compression_level=level)
    raise ValueError(f"unknown output format {output_format!r}")


def read_part(
    data: bytes | IO[bytes], output_format: str, schema: Sequence[tuple[str, str]] = ()
) -> Iterator[dict[str, Any]]:
    """The records of a part, whatever its format (CSV values typed by the schema)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    if output_format == "jsonl.gz":
        with gzip.GzipFile(fileobj=stream, mode="rb") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)
    elif output_format == "csv.gz":
        kinds = dict(schema)
        with gzip.GzipFile(fileobj=stream, mode="rb") as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            for row in reader:
                yield {
                    name: _typed(value, kinds.get(name, "string")) for name, value in row.items()
                }
    elif output_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(stream)
        for batch in table.iter_batches():
            yield from batch.to_pylist()
    else:
        raise ValueError(f"unknown output format {output_format!r}")


def _typed(value: str, kind: str) -> Any:
    if value == "":
        return None
    if kind in {"integer", "bigint"}:
        return int(value)
    if kind in {"number", "float"}:
        return float(value)
    if kind == "boolean":
        return value == "true"
    return value
