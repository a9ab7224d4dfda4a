"""What the dashboard's pages draw, computed on the server: a run's chunk timeline on a
timed axis, the grid of pipelines by interval, and per-pipeline charts as SVG geometry.
Pure functions of ledger records (no Flask), so each is tested on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from etl.domain.failures import split_failure
from etl.domain.runs import Chunk, Run


def duration(run: Run | Chunk) -> str:
    """``12.3 s`` from start to finish, or to now while running."""
    if run.started_at is None:
        return ""
    end = run.finished_at or datetime.now(UTC)
    seconds = (end - run.started_at).total_seconds()
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


@dataclass(frozen=True)
class Bar:
    """One chunk on the timeline, in percent of the track: 0 <= left, left + width <= 100."""

    chunk: Chunk
    left: float
    width: float
    summary: str
    traceback: str | None


@dataclass(frozen=True)
class Timeline:
    """A run's chunks on one time scale that covers every chunk's start and end."""

    start: datetime | None
    seconds: float
    bars: list[Bar]
    ticks: Sequence[tuple[float, str]]  # (percent, label)


MIN_BAR = 0.5  # percent: a chunk of a few milliseconds stays visible


def timeline(run: Run, chunks: list[Chunk], now: datetime | None = None) -> Timeline:
    """The chunks' bars, scaled from the earliest start to the latest end among the run
    and all its chunks (a chunk may finish after its run failed, or have started in an
    earlier attempt of a retried run), so every bar fits its track."""
    now = now or datetime.now(UTC)
    starts = [c.started_at for c in chunks if c.started_at is not None]
    if run.started_at is not None:
        starts.append(run.started_at)
    if not starts:
        return Timeline(None, 0.0, [_bar(c, 0.0, 0.0) for c in chunks], [])
    begin = min(starts)
    # A chunk still running ends "now" while its run is active, at the run's end after.
    open_end = run.finished_at or now
    ends = [c.finished_at or (open_end if c.started_at else None) for c in chunks]
    end = max([*starts, *(e for e in ends if e is not None), run.finished_at or begin])
    span = max((end - begin).total_seconds(), 0.001)
    bars = []
    for chunk, finish in zip(chunks, ends, strict=True):
        if chunk.started_at is None or finish is None:
            bars.append(_bar(chunk, 0.0, 0.0))
            continue
        left = (chunk.started_at - begin).total_seconds() / span * 100
        width = max((finish - chunk.started_at).total_seconds() / span * 100, MIN_BAR)
        width = min(width, 100.0)
        left = min(max(left, 0.0), 100.0 - width)
        bars.append(_bar(chunk, round(left, 3), round(width, 3)))
    ticks = [(p, f"+{span * p / 100:.{1 if span < 100 else 0}f} s") for p in (0, 25, 50, 75, 100)]
    return Timeline(begin, span, bars, ticks)


def _bar(chunk: Chunk, left: float, width: float) -> Bar:
    summary, tb = split_failure(chunk.error)
    return Bar(chunk, left, width, summary, tb)


@dataclass(frozen=True)
class GridRow:
    """One pipeline's latest intervals, oldest first; a cell is that interval's latest run."""

    pipeline: str
    cells: list[Run]


def grid(runs: list[Run], pipelines: list[str], columns: int) -> list[GridRow]:
    """Pipelines by interval: for each pipeline, the latest run of each of its last
    ``columns`` intervals (``runs`` newest first, as the ledger lists them)."""
    latest: dict[str, dict[datetime, Run]] = {name: {} for name in pipelines}
    for run in runs:
        per_interval = latest.setdefault(run.pipeline, {})
        per_interval.setdefault(run.interval.start, run)  # newest first: keep the first
    rows = []
    for name in sorted(latest):
        starts = sorted(latest[name])[-columns:]
        rows.append(GridRow(name, [latest[name][start] for start in starts]))
    return rows


def cell_label(name: str) -> str:
    """A grid cell's few characters for an interval's name: ``05-31`` for a date,
    ``14:00`` for a finer interval's start."""
    return name[5:] if len(name) == 10 else name[11:16]


@dataclass(frozen=True)
class Column:
    """One run in a chart: a bar per figure, in the SVG's own units."""

    run: Run
    x: float
    heights: tuple[float, ...]


@dataclass(frozen=True)
class Chart:
    """Bars over time: one column per run, oldest at the left."""

    title: str
    unit: str
    top: float  # the value at the chart's top
    columns: list[Column]
    width: float
    height: float
    bar: float


def chart(
    title: str,
    unit: str,
    runs: list[Run],
    values: Sequence[tuple[float, ...]],
    *,
    width: float = 600,
) -> Chart:
    """A bar chart of ``values`` (one tuple per run, stacked), ``runs`` oldest first."""
    height = 120.0
    top = max((sum(v) for v in values), default=0.0) or 1.0
    step = width / max(len(runs), 1)
    bar = min(max(step * 0.7, 1.0), 40.0)  # a few runs do not make slabs
    columns = [
        Column(
            run, round(i * step + (step - bar) / 2, 2), tuple(round(x / top * height, 2) for x in v)
        )
        for i, (run, v) in enumerate(zip(runs, values, strict=True))
    ]
    return Chart(title, unit, top, columns, width, height, round(bar, 2))


def run_charts(runs: list[Run]) -> list[Chart]:
    """A pipeline's ended runs (oldest first): duration, and rows written and rejected."""
    ended = [r for r in runs if r.started_at is not None and r.finished_at is not None]
    seconds = [((r.finished_at - r.started_at).total_seconds(),) for r in ended]  # type: ignore[operator]
    rows = [(float(r.rows_written or 0), float(r.rows_rejected or 0)) for r in ended]
    return [
        chart("run duration", "s", ended, seconds),
        chart("rows written / rejected", "rows", ended, rows),
    ]
