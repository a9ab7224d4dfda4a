"""How ``etl`` prints: tables sized to their content, counts with separators, and one
JSON document on stdout for ``--json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

JSON_HELP = "print one JSON document on stdout instead of text (for scripts)"


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """``--json``, the same on every command that prints."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def print_json(document: Any) -> None:
    """One JSON document on stdout; dates and datetimes as ISO 8601 text."""
    print(json.dumps(document, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "as_dict"):  # a run's interval or window
        return value.as_dict()
    return str(value)


def count(number: int | None) -> str:
    """``1,234,567``; empty for an unknown count."""
    return "" if number is None else f"{number:,}"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Collection[str] = (),
) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell (two spaces
    apart; the ``right`` columns right-aligned, for numbers). The last column is not
    padded, so a long reason or description only makes its own line longer."""
    cells = [[_text(cell) for cell in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    lines = []
    for row in [list(headers), *cells]:
        padded = [
            value.rjust(width) if header in right else value.ljust(width)
            for header, value, width in zip(headers, row, widths, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Collection[str] = ()
) -> None:
    """Print ``table(...)``."""
    for line in table(headers, rows, right=right):
        print(line)


def _text(cell: object) -> str:
    if cell is None:
        return ""
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, int):
        return f"{cell:,}"
    return str(cell)
