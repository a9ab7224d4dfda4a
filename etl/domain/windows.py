"""What a run reads, fixed when it is planned: its scope (interval, cursor window, query
bindings) and the key range its chunks split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from etl.domain.chunks import ChunkKey
from etl.domain.intervals import DataInterval

# A cursor value: a timestamp (``updated_at``), or an integer (a sequence).
CursorValue = datetime | int


@dataclass(frozen=True)
class CursorWindow:
    """Rows with ``low < cursor <= high``; no lower bound for a pipeline's first run, and
    no rows at all while an integer cursor's source is empty (``high`` None).

    Every chunk of a run reads the same window, and consecutive runs' windows meet
    exactly (the next ``low`` is this ``high``), so no row is read twice or skipped.
    """

    column: str
    low: CursorValue | None
    high: CursorValue | None

    def as_dict(self) -> dict[str, Any]:
        """The window's part of the run's recorded window (and manifest): an integer
        cursor's values as numbers, a timestamp's as ISO 8601 text."""
        return {
            "cursor_column": self.column,
            "cursor_low": _cursor_document(self.low),
            "cursor_high": _cursor_document(self.high),
        }

    @classmethod
    def from_dict(cls, window: dict[str, Any] | None) -> CursorWindow | None:
        """The cursor window recorded with a run, or None for a full-refresh run."""
        if not window or not window.get("cursor_column"):
            return None
        return cls(
            column=window["cursor_column"],
            low=_cursor_value(window.get("cursor_low")),
            high=_cursor_value(window.get("cursor_high")),
        )


def _cursor_document(value: CursorValue | None) -> str | int | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _cursor_value(document: str | int | None) -> CursorValue | None:
    if document is None or isinstance(document, int):
        return document
    return datetime.fromisoformat(document)


@dataclass(frozen=True)
class RunWindow:
    """What a run reads, fixed when it is planned: its key range (None when the source
    had no rows) and, for an incremental pipeline, its cursor window.

    Recorded with the run as the JSON document ``as_dict`` makes (the manifest's
    ``window``), the same document as before this type existed: no migration.
    """

    key_column: str
    # JSON scalars (etl.domain.chunks.ChunkKey): an integer key's ints, other keys' text.
    key_min: ChunkKey | None
    key_max: ChunkKey | None
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


@dataclass(frozen=True)
class ReadScope:
    """Which rows of its source a run reads, and what a query source binds: the same at
    planning and in every chunk, whenever it runs.

    A partitioned source reads ``interval.start <= time_column < interval.end``; an
    incremental one its cursor window; a query binds ``:interval_start``,
    ``:interval_end``, ``:logical_date`` and the run's params by name.
    """

    interval: DataInterval
    logical_date: date
    params: Mapping[str, Any] = field(default_factory=dict)
    time_column: str | None = None
    cursor: CursorWindow | None = None

    def bindings(self, names: Iterable[str]) -> dict[str, Any]:
        """The values of the parameters ``names`` a query uses."""
        values = {
            **self.params,
            "interval_start": self.interval.start,
            "interval_end": self.interval.end,
            "logical_date": self.logical_date,
        }
        return {name: values[name] for name in names}


def describe_window(
    window: RunWindow | None,
    interval: DataInterval,
    *,
    time_column: str | None,
    cursor_lag_s: int,
) -> list[str]:
    """What a run read, in words: its interval bound on the time column (partitioned),
    its cursor range and lag (incremental), and its key range; one line each."""
    lines = []
    if time_column is not None:
        lines.append(f"rows with {interval.start.isoformat()} <= {time_column} < "
                     f"{interval.end.isoformat()}")  # fmt: skip
    cursor = window.cursor if window else None
    if cursor is not None:
        document = cursor.as_dict()
        lag = f", {cursor_lag_s} s behind the clock when planned" if cursor_lag_s else ""
        lines.append(f"rows with {cursor.column} in ({document['cursor_low'] or 'the start'}, "
                     f"{document['cursor_high'] or 'nothing yet'}]{lag}")  # fmt: skip
    if window is not None and window.key_min is not None:
        lines.append(f"keys {window.key_column} {window.key_min}..{window.key_max}")
    return lines


def why_nothing_was_read(
    window: RunWindow | None,
    interval: DataInterval,
    *,
    time_column: str | None,
    cursor_lag_s: int,
) -> str:
    """Why a run planned with no rows read none: what it looked for and found empty."""
    cursor = window.cursor if window else None
    if cursor is not None:
        document = cursor.as_dict()
        lag = (
            f"; a row changed in the {cursor_lag_s} s before planning waits for the next run "
            "(cursor_lag_s)"
            if cursor_lag_s
            else ""
        )
        return (
            f"no row had {cursor.column} in ({document['cursor_low'] or 'the start'}, "
            f"{document['cursor_high'] or 'nothing yet'}]{lag}"
        )
    if time_column is not None:
        return (
            f"no row had {time_column} in [{interval.start.isoformat()}, "
            f"{interval.end.isoformat()})"
        )
    return "the source had no rows when the run was planned"
