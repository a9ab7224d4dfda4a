"""Typed schemas (etl/domain/schema.py): the logical types parsed from a pipeline's
declaration, each type's values and how every format carries them, the record check, and
the acceptance of issue 15 on the real steps (SQLite ledger and source, moto's S3): a
transform returning a datetime and a Decimal is written correctly in all three formats;
one returning an extra key, a missing key or a value of the wrong type fails its chunk
with an error naming the pipeline and the field."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any
from uuid import UUID

import pytest

from etl.bootstrap import Services
from etl.domain.errors import SchemaMismatch
from etl.domain.runs import RunState
from etl.domain.schema import TYPE_NAMES, parse_schema, parse_type, utc_text
from etl.domain.transform import BatchResult, Row
from etl.formats.columnar import (
    arrow_schema,
    conform_table,
    plain_records,
    records_table,
    sql_table,
)
from etl.formats.encoding import make_writer, read_part
from etl.pipelines import PIPELINES
from etl.pipelines.base import Pipeline, Source
from etl.pipelines.orders import ORDERS_DAILY
from etl.service import execution as steps

from builders import keys_under, new_run, prefix_of, with_orders

BERLIN = timezone(timedelta(hours=1))

# -- parsing a declaration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelled", "parsed"),
    [
        ("integer", "integer"),
        ("float", "float"),
        ("decimal(12,2)", "decimal(12,2)"),
        ("Decimal( 38 , 0 )", "decimal(38,0)"),
        ("numeric(5,5)", "decimal(5,5)"),
        ("string", "string"),
        ("boolean", "boolean"),
        ("date", "date"),
        ("timestamp", "timestamp"),
        ("TIMESTAMP_NTZ", "timestamp_ntz"),
        (" json ", "json"),
    ],
)
def test_each_logical_type_parses_to_one_spelling(spelled: str, parsed: str) -> None:
    assert str(parse_type(spelled)) == parsed


@pytest.mark.parametrize(
    ("spelled", "hint"),
    [
        ("bigint", "write integer"),
        ("text", "write string"),
        ("timestamptz", "write timestamp"),
        ("timestamp with time zone", "write timestamp"),
        ("timestamp without time zone", "timestamp_ntz"),
        ("number", "write float"),
        ("decimal", "decimal(p,s), e.g. decimal(12,2)"),
        ("uuid", "write string"),
        ("jsonb", "write json"),
        ("varchar(20)", "write string"),
        ("money_bags", ""),
    ],
)
def test_a_type_that_is_not_logical_is_refused_with_the_valid_types_and_a_hint(
    spelled: str, hint: str
) -> None:
    with pytest.raises(ValueError) as refused:
        parse_type(spelled)

    message = str(refused.value)
    assert f"{spelled!r} is not a logical type" in message
    assert hint in message
    assert ", ".join(TYPE_NAMES) in message


@pytest.mark.parametrize("spelled", ["decimal(39,2)", "decimal(0,0)", "decimal(4,5)"])
def test_a_decimal_beyond_parquets_decimal128_is_refused(spelled: str) -> None:
    with pytest.raises(ValueError, match="precision p of 1 to 38"):
        parse_type(spelled)


def test_a_pipeline_with_a_database_type_is_refused_at_definition_naming_it_and_the_field() -> None:
    with pytest.raises(ValueError) as refused:
        dataclasses.replace(ORDERS_DAILY, schema=(("order_id", "bigint"),))

    assert str(refused.value).startswith(
        "pipeline 'orders_daily': schema field 'order_id': 'bigint' is not a logical type "
        "(write integer); the types are integer, float, decimal(p,s), string, boolean, "
        "date, timestamp, timestamp_ntz, json"
    )


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ((("a", "integer"), ("a", "string")), "declared twice"),
        ((), "declares no field"),
        ((("a",),), "is not a"),
        ("a integer", "sequence of"),
    ],
)
def test_a_malformed_schema_is_refused(schema: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_schema(schema, "p")


def test_the_manifest_carries_each_fields_logical_type_in_one_spelling() -> None:
    pipeline = dataclasses.replace(
        ORDERS_DAILY, schema=(("order_id", "Integer"), ("amount", "DECIMAL(12, 2)"))
    )
    assert pipeline.schema_document() == [
        {"name": "order_id", "type": "integer"},
        {"name": "amount", "type": "decimal(12,2)"},
    ]
    assert pipeline.record_schema.pipeline == "orders_daily"


# -- each type's values -----------------------------------------------------------------------

UUID_VALUE = UUID("12345678-1234-5678-1234-567812345678")


class Colour(StrEnum):
    RED = "red"


class Size(IntEnum):
    LARGE = 3


@pytest.mark.parametrize(
    ("kind", "value", "carried"),
    [
        ("integer", 7, 7),
        ("integer", -(2**63), -(2**63)),
        ("integer", Size.LARGE, 3),
        ("float", 1.5, 1.5),
        ("float", 2, 2.0),
        ("decimal(12,2)", Decimal("12.3"), "12.30"),
        ("decimal(12,2)", Decimal("-0.00"), "0.00"),
        ("decimal(12,2)", 7, "7.00"),
        ("decimal(12,2)", " 1e3 ", "1000.00"),
        ("decimal(4,0)", Decimal("9999"), "9999"),
        ("string", "é", "é"),
        ("string", UUID_VALUE, "12345678-1234-5678-1234-567812345678"),
        ("string", Colour.RED, "red"),
        ("boolean", True, True),
        ("date", date(99, 1, 2), "0099-01-02"),
        ("date", "2026-11-22", "2026-11-22"),
        ("timestamp", datetime(2026, 1, 1, 1, 30, tzinfo=BERLIN), "2026-01-01T00:30:00Z"),
        (
            "timestamp",
            datetime(2026, 1, 1, 0, 0, 0, 500, tzinfo=UTC),
            "2026-01-01T00:00:00.000500Z",
        ),
        ("timestamp", "2026-01-01T00:00:07Z", "2026-01-01T00:00:07Z"),
        ("timestamp", "2026-01-01 01:00:07.000000+01:00", "2026-01-01T00:00:07Z"),
        ("timestamp", "1969-07-20T20:17:00.500000+00:00", "1969-07-20T20:17:00.500000Z"),
        ("timestamp_ntz", datetime(2026, 3, 29, 2, 30), "2026-03-29T02:30:00"),
        ("timestamp_ntz", "2026-03-29 02:30:00.25", "2026-03-29T02:30:00.250000"),
        ("json", {"b": [1, None], "a": "é"}, '{"a":"é","b":[1,null]}'),
        ("json", "text", '"text"'),
        ("json", 3, "3"),
    ],
)
def test_a_value_a_type_takes_is_carried_as_json_lines_writes_it(
    kind: str, value: Any, carried: Any
) -> None:
    schema = parse_schema([("v", kind)], "p")
    [conformed] = schema.conform([{"v": value}])
    if kind == "timestamp":
        # Kept as a datetime in UTC, which the writers print as utc_text does.
        assert type(conformed["v"]) is datetime and conformed["v"].tzinfo is UTC
        conformed = {"v": utc_text(conformed["v"])}
    assert conformed == {"v": carried}
    assert schema.conform([{"v": None}]) == [{"v": None}]  # every type is nullable


@pytest.mark.parametrize(
    ("kind", "value", "problem"),
    [
        ("integer", True, "got a bool: an integer takes an int"),
        ("integer", 1.0, "got a float"),
        ("integer", "1", "got a str"),
        ("integer", 2**63, "outside the 64-bit integer range"),
        ("float", float("nan"), "not a finite number"),
        ("float", float("inf"), "not a finite number"),
        ("float", Decimal("1.5"), "got a Decimal"),
        ("decimal(12,2)", 1.5, "got a float: a decimal takes a Decimal, an int or numeric text"),
        ("decimal(12,2)", Decimal("1.005"), "more than 2 digits after the point"),
        ("decimal(4,2)", Decimal("100"), "more than 2 digits before the point"),
        ("decimal(12,2)", "twelve", "is not numeric text"),
        ("decimal(12,2)", Decimal("NaN"), "not a finite number"),
        ("string", 5, "got an int"),
        ("string", b"bytes", "got a bytes"),
        ("boolean", 1, "got an int"),
        ("boolean", "true", "got a str"),
        ("date", datetime(2026, 1, 1), "got a datetime"),
        ("date", "22/11/2026", "not an ISO 8601 date"),
        ("timestamp", datetime(2026, 1, 1), "a datetime without a zone"),
        ("timestamp", "2026-01-01 00:00:00", "text without a zone"),
        ("timestamp", "yesterday", "not ISO 8601 text"),
        ("timestamp", date(2026, 1, 1), "got a date"),
        ("timestamp_ntz", datetime(2026, 1, 1, tzinfo=UTC), "a datetime with a zone"),
        ("timestamp_ntz", "2026-01-01T00:00:00Z", "a datetime with a zone"),
        ("json", {"a": {1, 2}}, "is not a JSON value"),
        ("json", {"a": float("nan")}, "is not a JSON value"),
        ("json", object(), "got an object"),
    ],
)
def test_a_value_of_another_type_is_a_mismatch_naming_the_pipeline_field_and_value(
    kind: str, value: Any, problem: str
) -> None:
    schema = parse_schema([("id", "integer"), ("v", kind)], "events")

    with pytest.raises(SchemaMismatch) as mismatch:
        schema.conform([{"id": 1, "v": None}, {"id": 2, "v": value}])

    message = str(mismatch.value)
    assert message.startswith(f"pipeline events: field 'v' ({parse_type(kind)}) ")
    assert problem in message
    assert message.endswith(f"e.g. {value!r}"[:80]) or "..." in message
    assert mismatch.value.kind == "invalid"
    assert isinstance(mismatch.value, ValueError)


def test_a_record_with_a_key_too_many_or_too_few_is_a_mismatch_naming_the_key() -> None:
    schema = parse_schema([("id", "integer"), ("amount", "decimal(12,2)")], "orders_x")

    with pytest.raises(SchemaMismatch) as extra:
        schema.conform([{"id": 1, "amount": Decimal(1), "debug": "row 7"}])
    with pytest.raises(SchemaMismatch) as missing:
        schema.conform([{"id": 1}])

    assert str(extra.value) == (
        "pipeline orders_x: field 'debug' is not in the schema (declare it, or leave it out "
        "of the records), e.g. 'row 7'"
    )
    assert str(missing.value) == (
        "pipeline orders_x: field 'amount' (decimal(12,2)) is missing from a record (every "
        "record holds every field of the schema; None for a null), e.g. {'id': 1}"
    )


def test_records_come_out_in_schema_order_whatever_order_the_transform_used() -> None:
    schema = parse_schema([("a", "integer"), ("b", "string")])
    (record,) = schema.conform([{"b": "x", "a": 1}])
    assert list(record) == ["a", "b"]


# -- the formats ----------------------------------------------------------------------------

TYPED_SCHEMA = (
    ("id", "integer"),
    ("ratio", "float"),
    ("amount", "decimal(12,2)"),
    ("ref", "string"),
    ("flag", "boolean"),
    ("day", "date"),
    ("at", "timestamp"),
    ("local_at", "timestamp_ntz"),
    ("payload", "json"),
)
TYPED_RECORDS = [
    {
        "id": 1,
        "ratio": 0.1,
        "amount": Decimal("12.3"),
        "ref": UUID_VALUE,
        "flag": True,
        "day": date(2026, 11, 22),
        "at": datetime(2026, 11, 22, 1, 30, 0, 500_000, tzinfo=BERLIN),
        "local_at": datetime(2026, 3, 29, 2, 30),
        "payload": {"b": [1, 2], "a": "é\n"},
    },
    {
        "id": 2,
        "ratio": -1e300,
        "amount": "-0.5",
        "ref": 'quo"te',
        "flag": False,
        "day": "0099-01-01",
        "at": "1969-07-20T20:17:00+00:00",
        "local_at": "2026-01-01T00:00:00",
        "payload": [],
    },
    dict.fromkeys((name for name, _ in TYPED_SCHEMA), None) | {"id": 3},
]
# What every format reads back (JSON Lines' values).
TYPED_READ_BACK = [
    {
        "id": 1,
        "ratio": 0.1,
        "amount": "12.30",
        "ref": "12345678-1234-5678-1234-567812345678",
        "flag": True,
        "day": "2026-11-22",
        "at": "2026-11-22T00:30:00.500000Z",
        "local_at": "2026-03-29T02:30:00",
        "payload": {"a": "é\n", "b": [1, 2]},
    },
    {
        "id": 2,
        "ratio": -1e300,
        "amount": "-0.50",
        "ref": 'quo"te',
        "flag": False,
        "day": "0099-01-01",
        "at": "1969-07-20T20:17:00Z",
        "local_at": "2026-01-01T00:00:00",
        "payload": [],
    },
    dict.fromkeys((name for name, _ in TYPED_SCHEMA), None) | {"id": 3},
]


def _written(output_format: str, write: Any) -> bytes:
    buffer = io.BytesIO()
    writer = make_writer(output_format, buffer, TYPED_SCHEMA)
    write(writer)
    writer.close()
    return buffer.getvalue()


@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz", "parquet"])
def test_every_type_reads_back_the_same_from_every_format(output_format: str) -> None:
    data = _written(output_format, lambda writer: writer.write_records(TYPED_RECORDS))

    assert list(read_part(data, output_format, TYPED_SCHEMA)) == TYPED_READ_BACK
    assert data == _written(output_format, lambda writer: writer.write_records(TYPED_RECORDS))


@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz"])
def test_a_part_written_from_an_arrow_table_has_the_bytes_of_one_written_from_records(
    output_format: str,
) -> None:
    schema = parse_schema(TYPED_SCHEMA)
    table = records_table(schema.conform(TYPED_RECORDS), schema)

    from_table = _written(output_format, lambda writer: writer.write_table(table))
    from_records = _written(output_format, lambda writer: writer.write_records(TYPED_RECORDS))

    assert gzip.decompress(from_table) == gzip.decompress(from_records)
    assert plain_records(table, schema) == TYPED_READ_BACK


def test_json_lines_carry_times_in_utc_with_z_decimals_as_text_and_json_as_values() -> None:
    lines = gzip.decompress(_written("jsonl.gz", lambda w: w.write_records(TYPED_RECORDS[:1])))

    assert lines.decode() == (
        '{"id":1,"ratio":0.1,"amount":"12.30","ref":"12345678-1234-5678-1234-567812345678",'
        '"flag":true,"day":"2026-11-22","at":"2026-11-22T00:30:00.500000Z",'
        '"local_at":"2026-03-29T02:30:00","payload":{"a":"é\\n","b":[1,2]}}\n'
    )


def test_csv_carries_json_as_its_text_and_booleans_as_words() -> None:
    text = gzip.decompress(
        _written("csv.gz", lambda w: w.write_records(TYPED_RECORDS[1:]))
    ).decode()

    assert text.splitlines()[0] == "id,ratio,amount,ref,flag,day,at,local_at,payload"
    assert text.splitlines()[1] == (
        '2,-1e+300,-0.50,"quo""te",false,0099-01-01,1969-07-20T20:17:00Z,2026-01-01T00:00:00,[]'
    )
    assert text.splitlines()[2] == "3,,,,,,,,"


def test_parquet_carries_each_type_as_its_own_parquet_type() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _written("parquet", lambda writer: writer.write_records(TYPED_RECORDS))
    table = pq.read_table(io.BytesIO(data))

    assert table.schema.equals(arrow_schema(TYPED_SCHEMA))
    assert [str(field.type) for field in table.schema] == [
        "int64", "double", "decimal128(12, 2)", "string", "bool", "date32[day]",
        "timestamp[us, tz=UTC]", "timestamp[us]", "extension<arrow.json>",
    ]  # fmt: skip
    first = table.slice(0, 1).to_pylist()[0]
    assert first["amount"] == Decimal("12.30")
    assert first["at"] == datetime(2026, 11, 22, 0, 30, 0, 500_000, tzinfo=UTC)
    assert first["local_at"] == datetime(2026, 3, 29, 2, 30)
    assert first["day"] == date(2026, 11, 22)
    assert json.loads(first["payload"]) == {"a": "é\n", "b": [1, 2]}
    assert isinstance(table.schema.field("at").type, pa.TimestampType)
    parquet_columns = pq.ParquetFile(io.BytesIO(data)).schema
    assert "JSON" in str(parquet_columns.column(8).logical_type)


def test_a_writer_refuses_a_record_that_does_not_match_before_writing_it() -> None:
    buffer = io.BytesIO()
    writer = make_writer("jsonl.gz", buffer, ORDERS_DAILY.record_schema)

    with pytest.raises(SchemaMismatch, match="pipeline orders_daily: field 'note' is not in"):
        writer.write_records([{"order_id": 1, "note": "x"}])

    assert writer.close().rows == 0


# -- Arrow tables (a columnar transform's, and COPY's text for SQL-only) ----------------------


def test_an_arrow_table_is_checked_and_cast_to_the_schemas_types() -> None:
    import pyarrow as pa

    schema = parse_schema([("id", "integer"), ("at", "timestamp"), ("amount", "decimal(6,2)")])
    table = pa.table(
        {
            "amount": pa.array(["1.5", None]),
            "id": pa.array([1, 2], pa.int32()),
            "at": pa.array(["2026-01-01T00:00:00Z", "2026-01-01T01:00:00.5+01:00"]),
        }
    )

    conformed = conform_table(table, schema)

    assert conformed.schema.equals(arrow_schema(schema))
    assert plain_records(conformed, schema) == [
        {"id": 1, "at": "2026-01-01T00:00:00Z", "amount": "1.50"},
        {"id": 2, "at": "2026-01-01T00:00:00.500000Z", "amount": None},
    ]


@pytest.mark.parametrize(
    ("columns", "problem"),
    [
        ({"id": [1], "at": ["2026-01-01T00:00:00Z"], "x": ["y"]}, "field 'x' is not in the schema"),
        ({"id": [1]}, "field 'at' (timestamp) is missing from the records"),
        ({"id": ["1"], "at": ["2026-01-01T00:00:00Z"]}, "field 'id' (integer) is an Arrow column"),
        (
            {"id": [1], "at": ["2026-01-01T00:00:00Z", "2026-01-01 00:00"][1:]},
            "field 'at' (timestamp) does not cast to timestamp[us, tz=UTC]",
        ),
    ],
)
def test_an_arrow_table_that_does_not_match_is_a_mismatch_naming_the_field(
    columns: dict[str, list[Any]], problem: str
) -> None:
    import pyarrow as pa

    schema = parse_schema([("id", "integer"), ("at", "timestamp")], "p")
    with pytest.raises(SchemaMismatch, match=re.escape(problem)) as mismatch:
        conform_table(pa.table(columns), schema)
    assert str(mismatch.value).startswith("pipeline p: ")


def test_a_float_column_holding_nan_is_a_mismatch_even_when_its_type_is_right() -> None:
    import pyarrow as pa

    schema = parse_schema([("id", "integer"), ("ratio", "float")], "p")
    table = pa.table({"id": [1, 2], "ratio": [0.5, float("nan")]}, schema=arrow_schema(schema))

    with pytest.raises(
        SchemaMismatch, match=re.escape("field 'ratio' (float) is not a finite number")
    ):
        make_writer("jsonl.gz", io.BytesIO(), schema).write_table(table)


def test_copy_text_is_read_as_each_type_for_a_sql_only_pipeline() -> None:
    import pyarrow as pa

    schema = parse_schema(TYPED_SCHEMA)
    copied = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),  # an integer key arrives as int64
            "ratio": ["0.1", "-1e+300"],
            "amount": ["12.30", "-0.50"],
            "ref": ["12345678-1234-5678-1234-567812345678", 'quo"te'],
            "flag": ["t", "f"],
            "day": ["2026-11-22", "0099-01-01"],
            "at": ["2026-11-22 00:30:00.5+00", "1969-07-20 20:17:00+00"],
            "local_at": ["2026-03-29 02:30:00", "2026-01-01 00:00:00"],
            "payload": ['{"b": [1, 2], "a": "é\\n"}', "[]"],
        }
    )

    typed = sql_table(copied, schema)

    assert typed.schema.equals(arrow_schema(schema))
    assert plain_records(typed, schema) == TYPED_READ_BACK[:2]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("at", "2026-01-01 00:00:00", "has no zone in the query's result"),
        ("flag", "yes", "is not a boolean (t or f)"),
        ("ratio", "NaN", "is not a finite number"),
        ("id", "12.5", "does not cast to int64"),
        ("amount", "1.005", "does not cast to decimal128(12, 2)"),
    ],
)
def test_copy_text_that_is_not_its_fields_type_is_a_mismatch_naming_it(
    column: str, value: str, problem: str
) -> None:
    import pyarrow as pa

    schema = parse_schema(TYPED_SCHEMA, "sql_events")
    row = {
        "id": "1", "ratio": "1", "amount": "1", "ref": "r", "flag": "t", "day": "2026-01-01",
        "at": "2026-01-01 00:00:00+00", "local_at": "2026-01-01 00:00:00", "payload": "{}",
    } | {column: value}  # fmt: skip

    with pytest.raises(SchemaMismatch, match=re.escape(problem)) as mismatch:
        sql_table(pa.table({name: [text] for name, text in row.items()}), schema)

    assert str(mismatch.value).startswith(f"pipeline sql_events: field {column!r}")
    assert mismatch.value.example == ("nan" if value == "NaN" else repr(value))


def test_read_part_reads_csv_of_a_manifest_with_the_old_type_names() -> None:
    data = gzip.compress(b"id,amount,at\n1,1.5,2026-01-01T00:00:00Z\n")
    old = [("id", "bigint"), ("amount", "number"), ("at", "timestamptz")]

    assert list(read_part(data, "csv.gz", old)) == [
        {"id": 1, "amount": 1.5, "at": "2026-01-01T00:00:00Z"}
    ]


# -- SQL-only pipelines ---------------------------------------------------------------------


def test_a_sql_only_pipeline_writes_its_source_columns_named_in_the_schema() -> None:
    pipeline = Pipeline(
        name="sql_events",
        description="Events as the query makes them.",
        source=Source(
            query="SELECT id, at, ok FROM events", key_column="id", columns=("id", "at", "ok")
        ),
        transform=None,
        schema=(("at", "timestamp"), ("ok", "boolean")),
    )

    result = pipeline.row_transform(
        [{"id": 1, "at": "2026-01-01 00:00:00.000000", "ok": 1}, {"id": 2, "at": None, "ok": "f"}]
    )

    assert pipeline.sql_only and pipeline.transform is None
    assert pipeline.record_schema.conform(result.records) == [
        {"at": datetime(2026, 1, 1, tzinfo=UTC), "ok": True},  # SQLite's text read as UTC
        {"at": None, "ok": False},
    ]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"schema": (("order_id", "integer"),)}, "'order_id' is not among the source's columns"),
        (
            {"columnar_transform": ORDERS_DAILY.columnar_transform},
            "has a columnar_transform but no transform",
        ),
    ],
)
def test_a_sql_only_pipeline_that_cannot_work_is_refused_at_definition(
    changes: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        dataclasses.replace(
            ORDERS_DAILY, **{"transform": None, "columnar_transform": None, **changes}
        )


# -- issue 15's acceptance, on the real steps (SQLite ledger and source, moto's S3) -----------

TYPED_ORDERS_SCHEMA = (("order_id", "integer"), ("amount", "decimal(14,3)"), ("at", "timestamp"))


def _moment(row: Row) -> datetime:
    # SQLite answers with zone-less text in UTC; the transform hands over Berlin time.
    at = row["created_at"]
    moment = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    return moment.replace(tzinfo=UTC).astimezone(BERLIN)


def _amount(row: Row) -> Decimal | None:
    return None if row["amount"] is None else Decimal(str(row["amount"]))


def typed_orders(rows: Sequence[Row]) -> BatchResult:
    """A datetime and a Decimal in every record, as the obvious transform returns them."""
    return BatchResult(
        records=[
            {"order_id": row["id"], "amount": _amount(row), "at": _moment(row)} for row in rows
        ]
    )


def with_an_extra_key(rows: Sequence[Row]) -> BatchResult:
    return BatchResult(records=[record | {"debug": "x"} for record in typed_orders(rows).records])


def with_a_missing_key(rows: Sequence[Row]) -> BatchResult:
    records = typed_orders(rows).records
    return BatchResult(records=[{k: v for k, v in r.items() if k != "at"} for r in records])


def with_a_wrong_type(rows: Sequence[Row]) -> BatchResult:
    records = typed_orders(rows).records
    return BatchResult(records=[r | {"amount": float(r["amount"] or 0)} for r in records])


def typed_pipeline(name: str, transform: Any, output_format: str = "jsonl.gz") -> Pipeline:
    return dataclasses.replace(
        ORDERS_DAILY,
        name=name,
        transform=transform,
        columnar_transform=None,
        schema=TYPED_ORDERS_SCHEMA,
        output_format=output_format,
        schedule=None,
    )


@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz", "parquet"])
def test_a_transforms_datetime_and_decimal_are_written_correctly_in_every_format(
    services: Services, monkeypatch: pytest.MonkeyPatch, output_format: str
) -> None:
    pipeline = typed_pipeline("typed_orders", typed_orders, output_format)
    monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)
    with_orders(services, 1_200)
    run_id = new_run(services.ledger, pipeline=pipeline.name, params={"chunk_size": 500})
    for chunk in steps.plan_run(services, run_id) or []:
        steps.transform_chunk(services, run_id, chunk.index)

    run = steps.commit_run(services, run_id)

    assert run.state is RunState.SUCCEEDED, run.reason
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    assert manifest["schema"] == [{"name": n, "type": t} for n, t in TYPED_ORDERS_SCHEMA]
    found = [
        record
        for part in manifest["parts"]
        for record in read_part(
            services.parts.get_bytes(part["key"]), output_format, TYPED_ORDERS_SCHEMA
        )
    ]
    source = typed_orders(_source_rows(services)).records
    assert len(found) == len(source) == 1_200
    assert found == [
        {
            "order_id": record["order_id"],
            "amount": None if record["amount"] is None else f"{record['amount']:.3f}",
            "at": record["at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }
        for record in source
    ]
    assert found[0]["at"] == "2026-01-01T00:00:11Z" and found[0]["amount"] == "1979.280"
    if output_format == "parquet":  # the values themselves, in Parquet's own types
        import pyarrow.parquet as pq

        part = manifest["parts"][0]["key"]
        table = pq.read_table(io.BytesIO(services.parts.get_bytes(part)))
        assert table.to_pylist() == [
            {**record, "at": record["at"].astimezone(UTC)} for record in source[: len(table)]
        ]


def _source_rows(services: Services) -> list[dict[str, Any]]:
    from sqlalchemy import text

    with services.source_engine.connect() as conn:
        query = text("SELECT id, amount, created_at FROM orders ORDER BY id")
        return [dict(row) for row in conn.execute(query).mappings()]


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (
            with_an_extra_key,
            "pipeline bad_orders: field 'debug' is not in the schema (declare it, or leave it "
            "out of the records), e.g. 'x'",
        ),
        (
            with_a_missing_key,
            "pipeline bad_orders: field 'at' (timestamp) is missing from a record",
        ),
        (
            with_a_wrong_type,
            "pipeline bad_orders: field 'amount' (decimal(14,3)) got a float: a decimal takes "
            "a Decimal, an int or numeric text, e.g. 1979.28",
        ),
    ],
    ids=["an extra key", "a missing key", "a wrong type"],
)
@pytest.mark.parametrize("output_format", ["jsonl.gz", "csv.gz", "parquet"])
def test_a_record_that_does_not_match_fails_its_chunk_naming_the_field(
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    transform: Any,
    message: str,
    output_format: str,
) -> None:
    pipeline = typed_pipeline("bad_orders", transform, output_format)
    monkeypatch.setitem(PIPELINES, pipeline.name, pipeline)
    with_orders(services, 600)
    run_id = new_run(services.ledger, pipeline=pipeline.name, params={"chunk_size": 500})
    steps.plan_run(services, run_id)

    with pytest.raises(SchemaMismatch) as mismatch:
        steps.transform_chunk(services, run_id, 0)

    assert message in str(mismatch.value)
    assert keys_under(services.parts, prefix_of(services, run_id) + "/") == []  # nothing written
