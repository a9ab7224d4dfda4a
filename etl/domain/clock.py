"""The one clock: every timestamp the service and the ledger record comes from here."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, an aware UTC datetime."""
    return datetime.now(UTC)
