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


@dataclass(frozen=True)
class RunWindow:
    """What a run reads, fixed when it is planned: its key range (None when the source
    had no rows) and, for an incremental pipeline, its cursor window.

    Recorded with the run as the JSON document ``as_dict`` makes (the manifest's
    ``window``), the same document as before this type existed: no migration.
    """

    key_column: str
    key_min: int | None
    key_max: int | None
    cursor: CursorWindow | None = None

    def as_dict(self) -> dict[str, Any]:
        """The window as recorded with the run and written in its manifest."""
        document: dict[str, Any] = {"key_column": self.key_column}
        if self.cursor is not None:
            document |= self.cursor.as_dict()
        return document | {"key_min": self.key_min, "key_max": self.key_max}

    @classmethod
    def from_dict(cls, document: dict[str, Any] | None) -> RunWindow | None:
        """The window recorded with a run; None for a run never planned."""
        if not document:
            return None
        return cls(
            key_column=str(document.get("key_column") or ""),
            key_min=document.get("key_min"),
            key_max=document.get("key_max"),
            cursor=CursorWindow.from_dict(document),
        )
