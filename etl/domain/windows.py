"""An incremental run's window: the cursor values it reads, fixed when it is planned."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CursorWindow:
    """Rows with ``low < cursor <= high``; no lower bound for a pipeline's first run.

    Every chunk of a run reads the same window, and consecutive runs' windows meet
    exactly (the next ``low`` is this ``high``), so no row is read twice or skipped.
    """

    column: str
    low: datetime | None
    high: datetime

    def as_dict(self) -> dict[str, Any]:
        """The window's part of the run's recorded window (and manifest)."""
        return {
            "cursor_column": self.column,
            "cursor_low": self.low.isoformat() if self.low else None,
            "cursor_high": self.high.isoformat(),
        }

    @classmethod
    def from_dict(cls, window: dict[str, Any] | None) -> CursorWindow | None:
        """The cursor window recorded with a run, or None for a full-refresh run."""
        if not window or not window.get("cursor_column"):
            return None
        low = window.get("cursor_low")
        return cls(
            column=window["cursor_column"],
            low=datetime.fromisoformat(low) if low else None,
            high=datetime.fromisoformat(window["cursor_high"]),
        )
