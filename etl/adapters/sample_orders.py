"""The sample ``orders`` table that ``etl seed`` and ``etl demo`` fill: deterministic rows
with the kinds of mess real order tables have (case and spacing, synonyms, bad values),
for ``orders_daily`` (``etl.pipelines.orders``) to clean."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, Numeric, Table, Text

from etl.adapters.db import replace_table

orders_metadata = MetaData()
ORDERS_TABLE = Table(
    "orders",
    orders_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("customer_email", Text),
    Column("amount", Numeric(14, 3)),
    Column("currency", Text),
    Column("status", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def sample_orders(count: int, seed: int = 20261123) -> Iterator[tuple[Any, ...]]:
    """``count`` deterministic orders with ids 1..count, about 2% of them invalid."""
    # bandit: sample data, not secrets
    rng = random.Random(seed)  # nosec B311
    start = datetime(2026, 1, 1, tzinfo=UTC)
    currencies = ["USD", "usd", " USD", "EUR", "eur ", "Gbp", "GBP", "CHF", "CAD", "AUD"]
    statuses = ["paid", "PAID", "Paid ", "shipped", "pending", "delivered", "refunded",
                "cancelled", "canceled"]  # fmt: skip
    for order_id in range(1, count + 1):
        cents = rng.randint(50, 250_000)
        amount: str | None = f"{cents // 100}.{cents % 100:02d}"
        email = f"customer{rng.randint(1, 50_000)}@Example.com"
        currency = rng.choice(currencies)
        status = rng.choice(statuses)
        roll = rng.random()
        if roll < 0.005:
            amount = None
        elif roll < 0.008:
            amount = f"-{amount}"
        elif roll < 0.010:
            amount = f"{amount}5"  # a tenth of a cent
        elif roll < 0.013:
            currency = "XXX"
        elif roll < 0.015:
            status = "lost in space"
        elif roll < 0.020:
            email = "not-an-email"
        created = start + timedelta(seconds=order_id * 7 + rng.randint(0, 6))
        updated = created + timedelta(minutes=rng.randint(0, 600))
        yield (order_id, email, amount, currency, status, created, updated)


def seed_orders(engine: Engine, rows: int) -> int:
    """Create and fill the sample ``orders`` table with ``rows`` deterministic orders."""
    return replace_table(engine, ORDERS_TABLE, sample_orders(rows))
