"""The one clock: every timestamp the service and the ledger record comes from here."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, an aware UTC datetime."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """The moment as an aware datetime, a naive one read as UTC (SQLite, message headers)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
