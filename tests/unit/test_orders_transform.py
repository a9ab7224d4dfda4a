from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from etl.adapters.sample_orders import sample_orders
from etl.domain.schema import utc_text
from etl.domain.transform import RowRejected
from etl.formats.columnar import transform_table, utc_timestamps
from etl.pipelines.orders import (
    ORDERS_COLUMNS,
    ORDERS_DAILY,
    mask_email,
    normalise_currency,
    normalise_status,
    to_cents,
    to_utc,
    transform_orders,
    transform_orders_columnar,
)

ALL_REASONS = {
    "missing_amount",
    "negative_amount",
    "invalid_amount",
    "unknown_currency",
    "unknown_status",
    "invalid_email",
}


def rejection_reason(helper: Any, value: Any) -> str:
    with pytest.raises(RowRejected) as caught:
        helper(value)
    return caught.value.reason


def order(order_id: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": order_id,
        "customer_email": "Jane.Doe@Example.COM",
        "amount": Decimal("12.30"),
        "currency": " usd",
        "status": "Canceled ",
        "created_at": datetime(2026, 3, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")),
        "updated_at": "2026-03-01 11:30:00.000000",
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (Decimal("12.30"), 1230),
        (Decimal("12.300"), 1230),  # SQLite's Numeric(14, 3) comes back with three places
        ("12.3", 1230),
        (" 7 ", 700),
        (12.3, 1230),  # a float, as SQLite REAL hands it back
        (19.99, 1999),
        (0, 0),
        ("0.01", 1),
        (Decimal("2500.00"), 250_000),
    ],
)
def test_to_cents_converts_major_units_to_integer_cents(value: Any, cents: int) -> None:
    result = to_cents(value)
    assert result == cents
    assert type(result) is int


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing_amount"),
        ("-12.30", "negative_amount"),
        (Decimal("-0.01"), "negative_amount"),
        ("12.345", "invalid_amount"),  # a tenth of a cent
        (Decimal("0.001"), "invalid_amount"),
        ("abc", "invalid_amount"),
        ("", "invalid_amount"),
        (float("nan"), "invalid_amount"),
        ("NaN", "invalid_amount"),
        (float("inf"), "invalid_amount"),
        ("-Infinity", "invalid_amount"),
        (0.1 + 0.2, "invalid_amount"),  # 0.30000000000000004 is not a whole number of cents
    ],
)
def test_to_cents_rejects_bad_amounts_with_a_reason(value: Any, reason: str) -> None:
    assert rejection_reason(to_cents, value) == reason


@pytest.mark.parametrize(
    ("value", "code"), [("usd", "USD"), (" eur ", "EUR"), ("Gbp", "GBP"), ("CHF", "CHF")]
)
def test_normalise_currency_trims_and_upper_cases(value: str, code: str) -> None:
    assert normalise_currency(value) == code


@pytest.mark.parametrize("value", ["XXX", "xxx", "", None, "US D", "dollars"])
def test_normalise_currency_rejects_unknown_codes(value: Any) -> None:
    assert rejection_reason(normalise_currency, value) == "unknown_currency"


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("paid", "paid"),
        ("PAID", "paid"),
        ("Paid ", "paid"),
        ("canceled", "cancelled"),
        (" CANCELED", "cancelled"),
        ("cancelled", "cancelled"),
        ("refunded", "refunded"),
    ],
)
def test_normalise_status_folds_case_spacing_and_synonyms(value: str, status: str) -> None:
    assert normalise_status(value) == status


@pytest.mark.parametrize("value", ["lost in space", "", None, "cancel", "paid!"])
def test_normalise_status_rejects_unknown_statuses(value: Any) -> None:
    assert rejection_reason(normalise_status, value) == "unknown_status"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("john@example.com", "j***@example.com"),
        ("John.Smith@Example.COM", "J***@example.com"),
        (" x@mail.example.org ", "x***@mail.example.org"),
    ],
)
def test_mask_email_keeps_first_character_and_lower_cased_domain(value: str, masked: str) -> None:
    assert mask_email(value) == masked


@pytest.mark.parametrize(
    "value",
    [
        "not-an-email",
        "@example.com",
        "john@",
        "john@localhost",
        "jo hn@example.com",
        "a@b@example.com",
        "",
        None,
    ],
)
def test_mask_email_rejects_invalid_addresses(value: Any) -> None:
    assert rejection_reason(mask_email, value) == "invalid_email"


@pytest.mark.parametrize(
    ("value", "iso"),
    [
        (datetime(2026, 3, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")), "2026-03-01T11:00:00Z"),
        (datetime(2026, 7, 1, 20, 0, tzinfo=ZoneInfo("America/New_York")), "2026-07-02T00:00:00Z"),
        (datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC), "2026-01-01T00:00:07Z"),
        (datetime(2026, 1, 1, 0, 0, 7), "2026-01-01T00:00:07Z"),  # naive means UTC
        (datetime(2026, 1, 1, 0, 0, 7, 250_000), "2026-01-01T00:00:07.250000Z"),
        ("2026-01-01 00:00:07.000000", "2026-01-01T00:00:07Z"),  # SQLite text
        ("2026-01-01T02:00:07+02:00", "2026-01-01T00:00:07Z"),
    ],
)
def test_to_utc_gives_the_instant_in_utc(value: Any, iso: str) -> None:
    moment = to_utc(value)
    assert moment.tzinfo is UTC
    assert utc_text(moment) == iso


def test_transform_orders_cleans_a_good_row() -> None:
    result = transform_orders([order(7)])
    assert result.rejections == []
    assert result.records == [
        {
            "order_id": 7,
            "customer_email": "J***@example.com",
            "amount_cents": 1230,
            "currency": "USD",
            "status": "cancelled",
            "created_at": datetime(2026, 3, 1, 11, 0, tzinfo=UTC),
            "updated_at": datetime(2026, 3, 1, 11, 30, tzinfo=UTC),
        }
    ]


def test_transform_orders_rejects_bad_rows_by_key_and_reason_and_keeps_the_rest() -> None:
    rows = [
        order(1),
        order(2, amount=None),
        order(3, amount="-1.00"),
        order(4),
        order(5, amount="1.005"),
        order(6, currency="XXX"),
        order(7, status="lost in space"),
        order(8, customer_email="not-an-email"),
        order(9),
    ]
    result = transform_orders(rows)

    assert [record["order_id"] for record in result.records] == [1, 4, 9]
    assert [(r.key, r.reason) for r in result.rejections] == [
        (2, "missing_amount"),
        (3, "negative_amount"),
        (5, "invalid_amount"),
        (6, "unknown_currency"),
        (7, "unknown_status"),
        (8, "invalid_email"),
    ]
    assert len(result.records) + len(result.rejections) == len(rows)
    assert result.rejected_by_reason() == Counter({reason: 1 for reason in ALL_REASONS})


def test_transform_orders_of_an_empty_batch_is_empty() -> None:
    result = transform_orders([])
    assert result.records == [] and result.rejections == []


def as_rows(count: int, seed: int = 20261123) -> list[dict[str, Any]]:
    return [dict(zip(ORDERS_COLUMNS, values, strict=True)) for values in sample_orders(count, seed)]


def test_sample_orders_is_deterministic_for_a_seed() -> None:
    assert list(sample_orders(500)) == list(sample_orders(500))
    assert list(sample_orders(500, seed=1)) == list(sample_orders(500, seed=1))
    assert list(sample_orders(500, seed=1)) != list(sample_orders(500, seed=2))


def test_sample_orders_has_ids_one_to_n_with_the_orders_columns() -> None:
    rows = list(sample_orders(1000))
    assert [row[0] for row in rows] == list(range(1, 1001))
    assert {len(row) for row in rows} == {len(ORDERS_COLUMNS)}


def test_about_two_percent_of_sample_orders_are_rejected_for_every_kind_of_reason() -> None:
    rows = as_rows(20_000)
    result = transform_orders(rows)

    assert len(result.records) + len(result.rejections) == len(rows)
    assert 200 <= len(result.rejections) <= 600, f"{len(result.rejections)} of 20000 rejected"
    assert set(result.rejected_by_reason()) == ALL_REASONS
    rejected_ids = {rejection.key for rejection in result.rejections}
    written_ids = {record["order_id"] for record in result.records}
    assert not rejected_ids & written_ids
    assert rejected_ids | written_ids == set(range(1, 20_001))


# COPY's text of a timestamptz in a UTC session, and text a text column could hold.
PLAIN_TIMES = [
    "2026-01-01 00:00:07+00",
    "2026-01-01 00:00:07.5+00",
    "1969-07-20 20:17:00.000007+00",
]
OTHER_TIMES = [
    "0000-01-01 00:00:00+00",  # year 0: Arrow reads it, a Python datetime cannot hold it
    "2026-01-01T00:00:07+00",
    "2026-01-01 02:00:07+02",
    "2026-01-01 00:00:07",
    "2026-01-01 00:00:07.1234567+00",
    "2026-01-01",
    None,
]


def test_utc_timestamps_reads_copys_utc_text_and_leaves_every_other_form() -> None:
    timestamps, plain = utc_timestamps(pa.array(PLAIN_TIMES + OTHER_TIMES))

    assert plain.to_pylist() == [True] * len(PLAIN_TIMES) + [False] * len(OTHER_TIMES)
    assert timestamps.type == pa.timestamp("us", tz="UTC")
    assert timestamps.to_pylist()[: len(PLAIN_TIMES)] == [to_utc(t) for t in PLAIN_TIMES]
    assert timestamps.null_count == len(OTHER_TIMES)


def test_a_batch_with_text_of_no_time_goes_to_the_row_transform_whole() -> None:
    """Hour 24 and 30 February have COPY's form; Arrow's cast refuses the whole column for
    either, so no row of the batch is taken as plain, and the row path rejects just those."""
    times = [*PLAIN_TIMES, "2026-01-01 24:00:00+00", "2026-02-30 00:00:00+00"]

    _, plain = utc_timestamps(pa.array(times))
    rows = [
        order(index + 1, created_at=moment, updated_at=moment) for index, moment in enumerate(times)
    ]
    table = pa.Table.from_pylist([{k: _copy_text(v) for k, v in row.items()} for row in rows])
    records, rejected = transform_table(
        table, transform_orders_columnar, transform_orders, ORDERS_DAILY.record_schema
    )

    assert plain.to_pylist() == [False] * len(times)
    assert rejected == Counter({"invalid_timestamp": 2})
    assert records["order_id"].to_pylist() == [1, 2, 3]
    assert records["created_at"].to_pylist() == [to_utc(t) for t in PLAIN_TIMES]


def _copy_text(value: Any) -> Any:
    """A value as COPY's CSV text reaches a columnar transform (the key stays an integer)."""
    return value if value is None or isinstance(value, int) else str(value)
