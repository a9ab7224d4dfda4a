"""Typed schemas: the logical types of a pipeline's records, and the check every record
passes on its way to a part.

A pipeline declares its output as ``schema=(("name", "type"), ...)``, each type one of
these; what a record's value may be (Python), and how JSON Lines and CSV carry it:

- ``integer``: an ``int`` (64-bit); a number.
- ``float``: a ``float`` or an ``int``, finite; a number (Python's ``repr``).
- ``decimal(p,s)``: a ``Decimal``, an ``int`` or numeric text, with at most ``s``
  digits after the point and ``p - s`` before (1 <= p <= 38); text with exactly ``s``
  decimals (``"12.30"``), so no reader goes through a float.
- ``string``: a ``str``, or a ``UUID`` (its hyphenated text); text.
- ``boolean``: a ``bool``; ``true`` / ``false``.
- ``date``: a ``date`` (not a ``datetime``) or ISO text; ``"2026-11-22"``.
- ``timestamp``: an instant, an aware ``datetime`` or ISO text with an offset or ``Z``;
  ISO 8601 in UTC ending in ``Z`` (``"2026-11-22T01:30:00.500000Z"``). A transform
  that has the datetime should return it: it is kept as it is to the writer, which
  prints it in C, where text costs a format and a parse (about 1.3 us a value).
- ``timestamp_ntz`` (no time zone): a wall-clock time, a naive ``datetime`` or ISO text
  without an offset; ``"2026-11-22T01:30:00"``.
- ``json``: any JSON value (``dict``, ``list``, ``str``, ``int``, finite ``float``,
  ``bool``); in JSON Lines the value itself, in CSV its JSON text; compact, keys sorted.

Every type takes ``None`` (null). Microseconds are kept and printed only when not zero,
as Python's ``isoformat`` does. Parquet's types, and how a consumer reads each, are in
``etl/formats/columnar.py`` (``arrow_type``) and docs/consumers.md.

A record that does not match (a field the schema does not declare, a declared field
missing, a value of another type) is a bug in the transform: ``Schema.conform`` raises
SchemaMismatch naming the pipeline, the field and an example value, which fails the
chunk. A problem with the source data is the transform's to reject (RowRejected).

The check is per field ``type(value)`` looked up in a small table: tens of nanoseconds a
field, plus a parse for a time or a date given as text (about 0.5 us a value). A
subclass (a StrEnum, an IntEnum, a pandas Timestamp) takes a slower path that accepts it
as its base type (never a ``bool`` as a number, nor a ``datetime`` as a ``date``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation
from typing import Any
from uuid import UUID

from etl.domain.errors import SchemaMismatch
from etl.domain.transform import BatchResult, Row

# The logical types, as a pipeline spells them (``decimal`` with its precision and scale).
TYPE_NAMES = (
    "integer",
    "float",
    "decimal(p,s)",
    "string",
    "boolean",
    "date",
    "timestamp",
    "timestamp_ntz",
    "json",
)
_PLAIN_KINDS = frozenset(name for name in TYPE_NAMES if "(" not in name)
_DECIMAL = re.compile(r"^(?:decimal|numeric)\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
# Decimal128's limit, so that Parquet carries every decimal a schema may declare.
MAX_DECIMAL_PRECISION = 38
# Type names from databases and other tools, and the logical type to write instead.
_HINTS = {
    **dict.fromkeys(
        ("int", "int2", "int4", "int8", "smallint", "bigint", "long", "serial", "bigserial"),
        "integer",
    ),
    **dict.fromkeys(
        ("number", "double", "double precision", "real", "float4", "float8", "float64"), "float"
    ),
    **dict.fromkeys(("decimal", "numeric", "money"), "decimal(p,s), e.g. decimal(12,2)"),
    **dict.fromkeys(
        ("text", "varchar", "char", "character varying", "str", "uuid", "citext"), "string"
    ),
    "bool": "boolean",
    **dict.fromkeys(
        ("timestamptz", "timestamp with time zone", "instant"), "timestamp (an instant, in UTC)"
    ),
    **dict.fromkeys(
        ("datetime", "timestamp without time zone", "localdatetime"),
        "timestamp (an instant) or timestamp_ntz (a wall-clock time without a zone)",
    ),
    **dict.fromkeys(("jsonb", "object", "dict", "map", "array"), "json"),
}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class LogicalType:
    """One of TYPE_NAMES; ``decimal`` with its precision and scale."""

    name: str
    precision: int | None = None
    scale: int | None = None

    def __str__(self) -> str:
        if self.name == "decimal":
            return f"decimal({self.precision},{self.scale})"
        return self.name


def parse_type(text: str) -> LogicalType:
    """A logical type from its name (case and spaces aside); ValueError naming the valid
    types, and the logical name of a database's type (``bigint``: integer)."""
    if not isinstance(text, str):
        raise ValueError(f"a type is a name ({', '.join(TYPE_NAMES)}), not {text!r}")
    spelled = " ".join(text.strip().lower().split())
    if spelled in _PLAIN_KINDS:
        return LogicalType(spelled)
    decimal = _DECIMAL.match(spelled)
    if decimal:
        precision, scale = int(decimal.group(1)), int(decimal.group(2))
        if not 1 <= precision <= MAX_DECIMAL_PRECISION or scale > precision:
            raise ValueError(
                f"{text!r}: a decimal(p,s) has a precision p of 1 to {MAX_DECIMAL_PRECISION} "
                "and a scale s of 0 to p"
            )
        return LogicalType("decimal", precision, scale)
    hint = _HINTS.get(spelled.split("(")[0].strip())
    instead = f" (write {hint})" if hint else ""
    raise ValueError(
        f"{text!r} is not a logical type{instead}; the types are {', '.join(TYPE_NAMES)}"
    )


@dataclass(frozen=True)
class Field:
    """A field of the records: its name and logical type."""

    name: str
    type: LogicalType


class _Refused(Exception):
    """A value its field's type does not take; the text says why (after the field)."""


# -- one converter per logical type: the value as JSON Lines and CSV carry it --------------

_EXACT = Context(prec=MAX_DECIMAL_PRECISION + 40, traps=[Inexact, InvalidOperation])


def _integer(value: int) -> int:
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    raise _Refused("is outside the 64-bit integer range")


def _float(value: float) -> float:
    if value - value == 0.0:  # false for NaN and the infinities
        return value
    raise _Refused("is not a finite number (JSON has no NaN or infinity)")


def _float_from_int(value: int) -> float:
    try:
        return _float(float(value))
    except OverflowError:
        raise _Refused("is too large for a float") from None


def _decimal_converters(precision: int, scale: int) -> dict[type, Callable[[Any], Any] | None]:
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** (precision - scale)

    def from_decimal(value: Decimal) -> str:
        if not value.is_finite():
            raise _Refused("is not a finite number")
        try:
            exact = value.quantize(quantum, context=_EXACT)
        except (Inexact, InvalidOperation):
            raise _Refused(f"has more than {scale} digits after the point") from None
        if abs(exact) >= limit:
            raise _Refused(f"has more than {precision - scale} digits before the point")
        return format(exact if exact else abs(exact), "f")  # no "-0.00"

    def from_int(value: int) -> str:
        return from_decimal(Decimal(value))

    def from_text(value: str) -> str:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise _Refused("is not numeric text") from None
        return from_decimal(number)

    return {Decimal: from_decimal, int: from_int, str: from_text}


def utc_text(moment: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC ending in ``Z`` (microseconds when not zero)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat()[:-6] + "Z"  # "+00:00" -> "Z"


def as_carried(record: Mapping[str, Any]) -> dict[str, Any]:
    """A conformed record as JSON Lines and CSV carry it: its timestamps (datetimes in
    UTC after Schema.conform) as their ``utc_text``."""
    return {
        name: utc_text(value) if isinstance(value, datetime) else value
        for name, value in record.items()
    }


def _timestamp(value: datetime) -> datetime:
    """An instant as a plain datetime in UTC: the value itself when it is one already."""
    if value.tzinfo is UTC and type(value) is datetime:
        return value  # the common case (a driver's timestamptz): kept, no copy
    if value.tzinfo is None or value.utcoffset() is None:
        raise _Refused(
            "is a datetime without a zone: a timestamp is an instant (give it a tzinfo, "
            "or declare the field timestamp_ntz)"
        )
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        raise _Refused("is outside the years 1 to 9999 in UTC") from None
    if type(moment) is not datetime:  # a subclass (a pandas Timestamp): as a datetime
        moment = datetime(
            moment.year,
            moment.month,
            moment.day,
            moment.hour,
            moment.minute,
            moment.second,
            moment.microsecond,
            tzinfo=UTC,
        )
    return moment


def _timestamp_text(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Refused("is not ISO 8601 text") from None
    if moment.tzinfo is None:
        raise _Refused(
            "is text without a zone: a timestamp is an instant (add an offset or Z, or "
            "declare the field timestamp_ntz)"
        )
    return _timestamp(moment)


def _timestamp_ntz(value: datetime) -> str:
    if value.tzinfo is not None:
        raise _Refused(
            "is a datetime with a zone: a timestamp_ntz has none (declare the field "
            "timestamp for an instant, or drop the tzinfo)"
        )
    return value.isoformat()


def _timestamp_ntz_text(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Refused("is not ISO 8601 text") from None
    return _timestamp_ntz(moment)


def _date(value: date) -> str:
    return value.isoformat()


def _date_text(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise _Refused("is not an ISO 8601 date (YYYY-MM-DD)") from None


def json_text(value: Any) -> str:
    """A JSON value as the json type writes it: compact, keys sorted, UTF-8 as is."""
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )


def _json(value: Any) -> str:
    try:
        return json_text(value)
    except (TypeError, ValueError) as exc:
        raise _Refused(f"is not a JSON value ({exc})") from None


def _json_float(value: float) -> str:
    return json_text(_float(value))


# What each type takes, by exact type(value): None means as it is; a function, converted.
_NONE: dict[type, Callable[[Any], Any] | None] = {type(None): None}
_CONVERTERS: dict[str, dict[type, Callable[[Any], Any] | None]] = {
    "integer": {int: _integer},
    "float": {float: _float, int: _float_from_int},
    "string": {str: None, UUID: str},
    "boolean": {bool: None},
    "date": {date: _date, str: _date_text},
    "timestamp": {datetime: _timestamp, str: _timestamp_text},
    "timestamp_ntz": {datetime: _timestamp_ntz, str: _timestamp_ntz_text},
    "json": {
        dict: _json,
        list: _json,
        tuple: _json,
        str: _json,
        int: _json,
        float: _json_float,
        bool: _json,
    },
}
# What a type takes, in words, for the error.
_TAKES = {
    "integer": "an int",
    "float": "a float or an int",
    "decimal": "a Decimal, an int or numeric text",
    "string": "a str or a UUID",
    "boolean": "a bool",
    "date": "a date or ISO 8601 text (YYYY-MM-DD)",
    "timestamp": "an aware datetime or ISO 8601 text with an offset or Z",
    "timestamp_ntz": "a naive datetime or ISO 8601 text without an offset",
    "json": "a dict, list, str, int, float or bool",
}


def converters(kind: LogicalType) -> dict[type, Callable[[Any], Any] | None]:
    """The exact types a logical type takes, each with its conversion (None: as it is)."""
    table = (
        _decimal_converters(kind.precision or 0, kind.scale or 0)
        if kind.name == "decimal"
        else _CONVERTERS[kind.name]
    )
    return {**_NONE, **table}


def _example(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A type a field's table of converters does not name (Schema.conform's fast path).
_NOT_IN_TABLE: Any = object()


class Schema:
    """A pipeline's parsed schema: its fields in order, and the record check."""

    def __init__(self, fields: Sequence[Field], pipeline: str | None = None) -> None:
        self.fields = tuple(fields)
        self.pipeline = pipeline
        self.names = tuple(field.name for field in self.fields)
        self.types = {field.name: field.type for field in self.fields}
        self._name_set = frozenset(self.names)
        self._checks = tuple(
            (field.name, field.type, converters(field.type)) for field in self.fields
        )

    def __repr__(self) -> str:
        return f"Schema({self.declaration()!r}, pipeline={self.pipeline!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def declaration(self) -> tuple[tuple[str, str], ...]:
        """``(("name", "type"), ...)`` with each type as the manifest spells it."""
        return tuple((field.name, str(field.type)) for field in self.fields)

    def document(self) -> list[dict[str, str]]:
        """The schema as the manifest carries it: ``[{"name", "type"}, ...]``."""
        return [{"name": name, "type": type_} for name, type_ in self.declaration()]

    def of_kind(self, *kinds: str) -> tuple[str, ...]:
        """The names of the fields of these logical types, in order."""
        return tuple(field.name for field in self.fields if field.type.name in kinds)

    def conform(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Each record checked against the schema and converted to the values JSON Lines
        and CSV carry (the table above; a json field as its JSON text), its fields in
        schema order; but a timestamp as a datetime in UTC, which the writers print as
        ``utc_text`` does. SchemaMismatch for a record with a field too many or too few,
        or a value of another type."""
        names = self.names
        checks = self._checks
        conformed: list[dict[str, Any]] = []
        for record in records:
            if type(record) is dict and tuple(record) == names:
                # The common case: a dict with the schema's fields in its order. It is
                # kept as it is unless a value must be converted (the table above), so a
                # record already as JSON Lines carries it costs no copy.
                copied: dict[str, Any] | None = None
                for name, kind, accepts in checks:
                    value = record[name]
                    convert = accepts.get(type(value), _NOT_IN_TABLE)
                    if convert is None:  # taken as it is
                        continue
                    if convert is _NOT_IN_TABLE:  # a subclass, or refused
                        converted = self._conform_value(name, kind, accepts, value)
                    else:
                        try:
                            converted = convert(value)
                        except _Refused as refused:
                            raise self.mismatch(
                                name, f"({kind}) {refused}", value, with_type=False
                            ) from None
                    if converted is not value:
                        if copied is None:
                            copied = dict(record)
                        copied[name] = converted
                conformed.append(record if copied is None else copied)
                continue
            try:
                matches = record.keys() == self._name_set
            except AttributeError:
                raise self.mismatch(
                    "(a record)", "is not a dict of field names to values", record
                ) from None
            if not matches:
                raise self._keys_mismatch(record)
            conformed.append(
                {
                    name: self._conform_value(name, kind, accepts, record[name])
                    for name, kind, accepts in checks
                }
            )
        return conformed

    def _conform_value(
        self,
        name: str,
        kind: LogicalType,
        accepts: dict[type, Callable[[Any], Any] | None],
        value: Any,
    ) -> Any:
        try:
            try:
                convert = accepts[type(value)]
            except KeyError:  # not a type of the table: a subclass, or refused
                return self._subclass(kind, accepts, value)
            return value if convert is None else convert(value)
        except _Refused as refused:
            raise self.mismatch(name, f"({kind}) {refused}", value, with_type=False) from None

    def _subclass(
        self, kind: LogicalType, accepts: dict[type, Callable[[Any], Any] | None], value: Any
    ) -> Any:
        """A value whose exact type is not in the table: a subclass of one that is (never
        a bool as a number, nor a datetime as a date) is taken as that type."""
        for base, convert in accepts.items():
            if base is type(None) or not isinstance(value, base):
                continue
            if isinstance(value, bool) and base is not bool:
                continue
            if base is date and isinstance(value, datetime):
                continue
            as_base: Callable[[Any], Any] = base
            plain = as_base(value) if base in (str, int, float) else value
            return plain if convert is None else convert(plain)
        raise _Refused(f"got {_a(type(value).__name__)}: {_a(kind.name)} takes {_TAKES[kind.name]}")

    def _keys_mismatch(self, record: Mapping[str, Any]) -> SchemaMismatch:
        extra = [name for name in record if name not in self._name_set]
        if extra:
            return self.mismatch(
                extra[0],
                "is not in the schema (declare it, or leave it out of the records)",
                record[extra[0]],
            )
        missing = next(name for name in self.names if name not in record)
        return self.mismatch(
            missing,
            f"({self.types[missing]}) is missing from a record (every record holds every "
            "field of the schema; None for a null)",
            dict(record),
            with_type=False,
        )

    def mismatch(
        self, field: str, problem: str, value: Any, *, with_type: bool = True
    ) -> SchemaMismatch:
        """SchemaMismatch for ``field`` of this schema's pipeline."""
        kind = self.types.get(field)
        if with_type and kind is not None:
            problem = f"({kind}) {problem}"
        return SchemaMismatch(self.pipeline, field, problem, _example(value))

    def from_database(self, row: Row) -> dict[str, Any]:
        """A source row as a SQL-only pipeline's record: the schema's columns, with the
        values a database driver gives (SQLite's text, 0/1 booleans, numbers) read as
        their field's type, the way COPY's text is on PostgreSQL. Zone-less times in a
        timestamp field are taken as UTC (SQLite has no zones)."""
        try:
            return {name: _from_database(kind, row[name]) for name, kind, _ in self._checks}
        except KeyError as missing:
            raise self.mismatch(
                str(missing.args[0]), "is not a column of the source rows", dict(row)
            ) from None


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _from_database(kind: LogicalType, value: Any) -> Any:
    """A driver's value for a field of ``kind``, before the record check."""
    if value is None:
        return None
    name = kind.name
    try:
        if name == "integer" and isinstance(value, str | Decimal | float):
            number = Decimal(str(value).strip())
            return int(number) if number == number.to_integral_value() else value
        if name == "float" and isinstance(value, str | Decimal):
            return float(value)
        if name == "decimal" and isinstance(value, float):
            return Decimal(repr(value))
        if name == "string" and not isinstance(value, str | UUID | bytes):
            return str(value)
        if name == "boolean" and not isinstance(value, bool):
            spelled = str(value).strip().lower()
            return {"t": True, "true": True, "1": True, "f": False, "false": False, "0": False}[
                spelled
            ]
        if name == "timestamp":
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            if isinstance(moment, datetime) and moment.tzinfo is None:
                return moment.replace(tzinfo=UTC)
            return moment
        if name == "json" and isinstance(value, str | bytes):
            return json.loads(value)
    except (ValueError, KeyError, ArithmeticError):
        return value  # the record check names the field and the value
    return value


def parse_schema(declaration: Any, pipeline: str | None = None) -> Schema:
    """A pipeline's ``schema=(("name", "type"), ...)`` parsed; ValueError naming the
    field and, for a type that is not one, the valid types."""
    where = f"pipeline {pipeline!r}: " if pipeline else ""
    if isinstance(declaration, str | bytes) or not isinstance(declaration, Sequence):
        raise ValueError(f'{where}schema is a sequence of ("name", "type") pairs')
    fields: list[Field] = []
    seen: set[str] = set()
    for entry in declaration:
        if (
            isinstance(entry, str | bytes)
            or not isinstance(entry, Sequence)
            or len(entry) != 2
            or not isinstance(entry[0], str)
        ):
            raise ValueError(f'{where}schema entry {entry!r} is not a ("name", "type") pair')
        name, spelled = entry
        if not name:
            raise ValueError(f"{where}a schema field needs a name")
        if name in seen:
            raise ValueError(f"{where}schema field {name!r} is declared twice")
        seen.add(name)
        try:
            kind = parse_type(spelled)
        except ValueError as exc:
            raise ValueError(f"{where}schema field {name!r}: {exc}") from None
        fields.append(Field(name, kind))
    if not fields:
        raise ValueError(f"{where}schema declares no field")
    return Schema(fields, pipeline)


def sql_only_transform(schema: Schema) -> Callable[[Sequence[Row]], BatchResult]:
    """The row transform of a pipeline without one (SQL-only), where there is no COPY:
    each row's schema columns as they are, read as their types (Schema.from_database)."""

    def transform(rows: Sequence[Row]) -> BatchResult:
        return BatchResult(records=[schema.from_database(row) for row in rows])

    return transform
