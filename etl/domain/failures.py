"""A failure as the ledger keeps it: one summary line, then the last frames of its
traceback, trimmed to fit the ledger's text (a chunk's ``error``, a run's ``reason``)."""

from __future__ import annotations

import traceback

# The ledger keeps this many characters of a chunk's error or a run's reason.
FAILURE_KEPT = 2000
TRACEBACK_MARK = "\nTraceback (most recent call last, trimmed):\n"


def failure_text(summary: str, exc: BaseException | None, limit: int = FAILURE_KEPT) -> str:
    """``summary`` and, when ``exc`` has one, its traceback's innermost frames: as many as
    fit in ``limit`` characters with the summary (which is kept first, cut if it must)."""
    summary = summary.strip()[:limit]
    if exc is None or exc.__traceback__ is None:
        return summary
    frames = traceback.format_tb(exc.__traceback__)
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]
    room = limit - len(summary) - len(TRACEBACK_MARK) - len(last) - 1
    kept: list[str] = []
    # The innermost frames say where it broke: keep them, drop the outer ones first.
    for frame in reversed(frames):
        if sum(map(len, kept)) + len(frame) > room:
            break
        kept.insert(0, frame)
    if not kept:
        return summary
    skipped = len(frames) - len(kept)
    head = f"  ... {skipped} outer frame{'s' if skipped != 1 else ''} left out\n" if skipped else ""
    text = summary + TRACEBACK_MARK + head + "".join(kept) + last
    return text[:limit]


def split_failure(text: str | None) -> tuple[str, str | None]:
    """A recorded failure as (its summary, its traceback or None)."""
    if not text:
        return "", None
    summary, mark, rest = text.partition(TRACEBACK_MARK)
    return summary, (mark.strip() + "\n" + rest) if mark else None
