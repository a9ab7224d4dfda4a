from __future__ import annotations

import gzip
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.domain.runs import Chunk, ChunkState, chunk_result
from etl.domain.schema import utc_text
from etl.formats.encoding import JsonLinesGzipWriter, PartStats, make_writer, read_part

from builders import read_json_lines_gzip

RECORDS = [
    {"order_id": i, "customer_email": "j***@example.com", "amount_cents": i * 7, "note": "é ✓"}
    for i in range(1, 2001)
]


def encode(records: list[dict[str, Any]]) -> tuple[bytes, PartStats]:
    buffer = io.BytesIO()
    writer = JsonLinesGzipWriter(buffer)
    writer.write_records(records)
    stats = writer.close()
    return buffer.getvalue(), stats


def test_the_same_records_encode_to_identical_bytes_and_sha256() -> None:
    first, first_stats = encode(RECORDS)
    second, second_stats = encode(RECORDS)
    assert first == second
    assert first_stats == second_stats


def test_stats_match_the_bytes_actually_written() -> None:
    data, stats = encode(RECORDS)
    assert stats.rows == len(RECORDS)
    assert stats.bytes == len(data)
    assert stats.sha256 == hashlib.sha256(data).hexdigest()


def test_output_is_gzip_with_no_timestamp_or_file_name_in_the_header() -> None:
    data, _ = encode(RECORDS[:3])
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert data[3] & 0x08 == 0  # no FNAME flag


def test_records_round_trip_through_read_json_lines_gzip() -> None:
    data, _ = encode(RECORDS)
    assert read_json_lines_gzip(data) == RECORDS


def test_records_written_in_several_calls_are_all_counted_and_kept_in_order() -> None:
    buffer = io.BytesIO()
    writer = JsonLinesGzipWriter(buffer)
    writer.write_records(RECORDS[:700])
    writer.write_records([])
    writer.write_records(RECORDS[700:])
    stats = writer.close()
    assert stats.rows == len(RECORDS)
    assert read_json_lines_gzip(buffer.getvalue()) == RECORDS


def test_one_json_object_per_line_with_compact_separators_and_utf8() -> None:
    data, _ = encode([{"a": 1, "b": "é"}, {"a": 2, "b": None}])
    assert gzip.decompress(data) == '{"a":1,"b":"é"}\n{"a":2,"b":null}\n'.encode()


def test_zero_records_still_give_a_valid_empty_gzip() -> None:
    data, stats = encode([])
    assert stats.rows == 0
    assert stats.bytes == len(data) > 0
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    assert gzip.decompress(data) == b""
    assert read_json_lines_gzip(data) == []


@pytest.mark.parametrize("rows", [10, 10_000_000])
def test_the_chunk_result_payload_stays_under_one_kilobyte(rows: int) -> None:
    chunk = Chunk(
        run_id="0b9f5c1e-5d8e-4a53-9c57-0c6f6b1f3c2d",
        index=99_999,
        key_lo=1,
        key_hi=rows + 1,
        state=ChunkState.DONE,
        s3_key=(
            "warehouse/exports/nightly-etl/production/orders_daily/dt=2026-11-01/"
            "run=0b9f5c1e-5d8e-4a53-9c57-0c6f6b1f3c2d/part-99999.jsonl.gz"
        ),
        rows=rows,
        bytes=rows * 180,
        sha256=hashlib.sha256(b"part").hexdigest(),
    )
    payload = chunk_result(chunk)
    assert set(payload) == {"key", "rows", "bytes", "sha256"}
    assert payload["rows"] == rows
    assert len(json.dumps(payload).encode()) < 1024


# -- every format ---------------------------------------------------------------------------

FORMAT_SCHEMA = (("id", "integer"), ("name", "string"), ("amount", "float"), ("ok", "boolean"))
FORMAT_RECORDS = [
    {"id": 1, "name": 'a, "quoted"\nline', "amount": 1.5, "ok": True},
    {"id": 2, "name": None, "amount": None, "ok": False},
    {"id": 3, "name": "ü", "amount": 0.0, "ok": None},
]


def _write(fmt: str, level: int | None = None) -> tuple[bytes, Any]:
    import io

    from etl.formats.encoding import make_writer

    buffer = io.BytesIO()
    writer = make_writer(fmt, buffer, FORMAT_SCHEMA, level)
    writer.write_records(FORMAT_RECORDS[:2])
    writer.write_records(FORMAT_RECORDS[2:])
    stats = writer.close()
    return buffer.getvalue(), stats


@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv.gz", "parquet"])
def test_every_format_reads_back_what_was_written_and_is_deterministic(fmt: str) -> None:
    from etl.formats.encoding import read_part

    data, stats = _write(fmt)
    again, _ = _write(fmt)

    assert data == again  # the same records give the same bytes, so the same sha256
    assert stats.rows == 3 and stats.bytes == len(data)
    assert stats.sha256 == hashlib.sha256(data).hexdigest()
    assert list(read_part(data, fmt, FORMAT_SCHEMA)) == FORMAT_RECORDS


def test_a_higher_compression_level_is_used() -> None:
    fast, _ = _write("parquet", 1)
    small, _ = _write("parquet", 19)
    assert fast != small


@pytest.mark.parametrize(
    ("fmt", "level", "problem"),
    [("jsonl.gz", 10, "1 to 9"), ("parquet", 23, "1 to 22"), ("xml", None, "unknown output")],
)
def test_a_pipeline_refuses_a_bad_format_or_level(
    fmt: str, level: int | None, problem: str
) -> None:
    import dataclasses

    from etl.pipelines.orders import ORDERS_DAILY

    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(ORDERS_DAILY, output_format=fmt, compression_level=level)


TRICKY_RECORDS = [
    {"id": 1, "text": 'a "quoted" word', "flag": True},
    {"id": -2, "text": "back\\slash and é, 中文, 😀", "flag": False},
    {"id": None, "text": None, "flag": None},
    {"id": 2**62, "text": "", "flag": True},
]
TRICKY_SCHEMA = (("id", "integer"), ("text", "string"), ("flag", "boolean"))


@pytest.mark.parametrize(
    "records",
    [TRICKY_RECORDS, [*TRICKY_RECORDS, {"id": 3, "text": "tab\there\nnewline", "flag": True}]],
    ids=["built in Arrow", "control characters: that column through Python's encoder"],
)
def test_json_lines_from_an_arrow_table_are_the_bytes_of_json_dumps(
    records: list[dict[str, Any]],
) -> None:
    import pyarrow as pa

    from etl.formats.columnar import arrow_schema

    table = pa.Table.from_pylist(records, schema=arrow_schema(TRICKY_SCHEMA))
    from_table, from_records = io.BytesIO(), io.BytesIO()
    writer = JsonLinesGzipWriter(from_table)
    writer.write_table(table.slice(0, 1))  # a slice: offsets that do not start at zero
    writer.write_table(table.slice(1))
    writer.close()
    writer = JsonLinesGzipWriter(from_records)
    writer.write_records(records)
    writer.close()

    assert gzip.decompress(from_table.getvalue()) == gzip.decompress(from_records.getvalue())
    assert read_json_lines_gzip(from_table.getvalue()) == records


# Text with what JSON escapes far more often than at random: a column with a control
# character goes through Python's encoder whole, so half the columns have none.
CONTROL = "\x00\x1f\n\t"
ESCAPED = st.sampled_from('"\\' + CONTROL)
OTHER = st.one_of(st.sampled_from(" é中😀\u2028\x85"), st.characters(exclude_categories=["Cs"]))
TEXT_COLUMNS = st.one_of(
    st.lists(st.one_of(st.none(), st.text(st.one_of(ESCAPED, OTHER))), min_size=1, max_size=12),
    st.lists(
        st.one_of(
            st.none(),
            st.text(st.one_of(ESCAPED, OTHER)).map(lambda t: "".join(c for c in t if c >= " ")),
        ),
        min_size=1,
        max_size=12,
    ),
)


@given(texts=TEXT_COLUMNS, cut=st.integers(min_value=0, max_value=12))
def test_a_column_of_any_text_is_written_from_arrow_as_from_its_records(
    texts: list[str | None], cut: int
) -> None:
    """Quotes, backslashes, control characters, any Unicode: write_table reads what JSON
    escapes from a column's bytes, here in two chunks, the second at an offset in the
    first's buffers (as slices of COPY's blocks are)."""
    import pyarrow as pa

    from etl.formats.columnar import arrow_schema

    schema = (("text", "string"),)
    table = pa.table({"text": texts}, arrow_schema(schema))
    chunked = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    records = [{"text": text} for text in texts]
    from_table, from_records = io.BytesIO(), io.BytesIO()
    writer = JsonLinesGzipWriter(from_table, schema=schema)
    writer.write_table(chunked)
    writer.close()
    writer = JsonLinesGzipWriter(from_records, schema=schema)
    writer.write_records(records)
    writer.close()

    assert gzip.decompress(from_table.getvalue()) == gzip.decompress(from_records.getvalue())
    assert read_json_lines_gzip(from_table.getvalue()) == records


def test_json_lines_are_what_json_loads_reads_and_each_record_one_compact_line() -> None:
    data, _ = encode(TRICKY_RECORDS)
    lines = gzip.decompress(data).split(b"\n")
    assert lines[-1] == b""  # every line ends in a newline, the last too
    assert [json.loads(line) for line in lines[:-1]] == TRICKY_RECORDS
    assert lines[1] == '{"id":-2,"text":"back\\\\slash and é, 中文, 😀","flag":false}'.encode()


def test_a_parquet_part_holds_row_groups_of_at_least_65536_rows_whatever_the_batches() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from etl.formats.columnar import arrow_schema
    from etl.formats.encoding import PARQUET_ROW_GROUP_ROWS, ParquetPartWriter

    schema = (("id", "integer"), ("text", "string"))
    rows = 150_000
    buffer = io.BytesIO()
    writer = ParquetPartWriter(buffer, schema)
    for start in range(0, rows, 8_000):  # COPY's blocks are about this size
        ids = range(start, min(start + 8_000, rows))
        writer.write_table(
            pa.table({"id": list(ids), "text": [f"t{i}" for i in ids]}, arrow_schema(schema))
        )
    stats = writer.close()

    part = pq.ParquetFile(io.BytesIO(buffer.getvalue()))
    groups = [part.metadata.row_group(i).num_rows for i in range(part.num_row_groups)]
    assert stats.rows == rows == sum(groups)
    assert all(size >= PARQUET_ROW_GROUP_ROWS for size in groups[:-1]), groups
    assert len(groups) == 3  # 72,000 + 72,000 + the last 6,000
    assert part.read().column("id").to_pylist() == list(range(rows))


FLAT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(
    records=st.lists(st.dictionaries(st.text(), FLAT_VALUES, min_size=1, max_size=4), max_size=8)
)
def test_flat_records_are_one_json_object_a_line_whatever_their_text(
    records: list[dict[str, Any]],
) -> None:
    from etl.formats.encoding import _flat_json_lines

    if not records:
        return
    lines = _flat_json_lines(records).split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == records


# Any instant, in any fixed offset from UTC (Schema.conform hands the writers a datetime in
# UTC; a transform may hand it one in any zone).
INSTANTS = st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 30)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)


@given(moments=st.lists(INSTANTS, min_size=1, max_size=5))
def test_a_timestamp_is_written_as_utc_text_in_every_format(moments: list[datetime]) -> None:
    schema = [("at", "timestamp")]
    records = [{"at": moment} for moment in moments]
    expected = [utc_text(moment) for moment in moments]

    for fmt in ("jsonl.gz", "csv.gz", "parquet"):
        buffer = io.BytesIO()
        writer = make_writer(fmt, buffer, schema)
        writer.write_records(records)
        writer.close()
        read = [record["at"] for record in read_part(buffer.getvalue(), fmt, schema)]
        assert read == expected, fmt
