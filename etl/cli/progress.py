"""Progress on the terminal: a line rewritten in place on a TTY, plain lines otherwise."""

from __future__ import annotations

from typing import TextIO

BAR_WIDTH = 24


class ProgressLine:
    """One line rewritten in place on a terminal; a new line per change otherwise
    (a change of the counts, not of the clock, so a log stays short)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_counts = ""

    def show(self, text: str, counts: str) -> None:
        """Show ``text``; ``counts`` is the part whose change earns a new plain line."""
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        elif counts != self.last_counts:
            print(text, file=self.stream, flush=True)
        self.last_counts = counts

    def finish(self) -> None:
        """End the in-place line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#########...............]``."""
    filled = round(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"


def run_progress(
    state: str, done: int, total: int | None, rows: int, elapsed_s: float
) -> tuple[str, str]:
    """A run's progress line, and its counts part: ``running [####....] 3/8 chunks |
    30,000 rows | 12,000 rows/s | 0:02 | ETA 0:03``."""
    if total is None:
        counts = f"{state}: planning"
        return counts, counts
    counts = f"{state} {bar(done, total)} {done}/{total} chunks | {rows:,} rows"
    parts = [counts]
    if elapsed_s > 0 and rows:
        parts.append(f"{rows / elapsed_s:,.0f} rows/s")
    parts.append(clock(elapsed_s))
    if 0 < done < total:
        parts.append("ETA " + clock(elapsed_s / done * (total - done)))
    return " | ".join(parts), counts
