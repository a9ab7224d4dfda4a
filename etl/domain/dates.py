"""Dates of runs."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

# date.fromisoformat also reads other ISO 8601 forms of the same length ("2026-W01-1").
YYYY_MM_DD = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def previous_day(moment: datetime, timezone: str) -> date:
    """The day before ``moment`` as seen in ``timezone``: a nightly run's logical date."""
    return moment.astimezone(ZoneInfo(timezone)).date() - timedelta(days=1)


def parse_logical_date(text: str) -> date:
    """A YYYY-MM-DD date; raises ValueError with a readable message."""
    try:
        if not YYYY_MM_DD.fullmatch(text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date in YYYY-MM-DD form: {text!r}") from None
