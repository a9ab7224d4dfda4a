"""Where a run's objects live in the bucket; consumers rely on this layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date

from etl.domain.intervals import DataInterval, Grain

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
# <pipeline prefix>/<partition>/run=<run id>/<object name>: nothing deeper, nothing else.
# The partition is dt=<YYYY-MM-DD>, then for a sub-daily pipeline hour=<HH>, and
# minute=<MM> and second=<SS> for intervals that do not start on the hour or minute.
_RUN_OBJECT = re.compile(
    r"^(dt=(\d{4}-\d{2}-\d{2})(?:/hour=\d{2}(?:/minute=\d{2}(?:/second=\d{2})?)?)?)"
    r"/run=([^/]+)/([^/]+)$"
)


def partition_path(grain: Grain, interval: DataInterval) -> str:
    """Where a run's interval puts it: ``dt=<logical date>`` for a daily pipeline (the
    day in its time zone); for a finer one ``dt=<date>/hour=<HH>`` (and ``minute=``,
    ``second=`` when its intervals need them) of the interval's start in UTC, so no
    partition repeats or vanishes at a daylight-saving change."""
    if not grain.sub_daily:
        return f"dt={grain.logical_date(interval).isoformat()}"
    start = interval.start.astimezone(UTC)
    path = f"dt={start.date().isoformat()}/hour={start.hour:02d}"
    seconds = grain.seconds if grain.seconds else 3600
    if seconds % 3600 or start.minute or start.second:
        path += f"/minute={start.minute:02d}"
    if seconds % 60 or start.second:
        path += f"/second={start.second:02d}"
    return path


def pipeline_prefix(prefix: str, pipeline: str) -> str:
    """``<prefix>/<pipeline>`` (no trailing slash): where all of a pipeline's runs live."""
    return "/".join(p.strip("/") for p in (prefix, pipeline) if p.strip("/"))


def run_prefix(prefix: str, pipeline: str, partition: str, run_id: str) -> str:
    """``<prefix>/<pipeline>/<partition>/run=<run_id>`` (no trailing slash); ``pipeline``
    is the pipeline's output path (its name unless it sets another), ``partition`` what
    ``partition_path`` makes."""
    parts = [pipeline_prefix(prefix, pipeline), partition, f"run={run_id}"]
    return "/".join(part for part in parts if part)


def part_key(run_prefix_: str, index: int, extension: str) -> str:
    """The deterministic key of chunk ``index``'s part: ``part-00042.<ext>``."""
    return f"{run_prefix_}/part-{index:05d}.{extension}"


def manifest_key(run_prefix_: str) -> str:
    """The manifest, written after every part."""
    return f"{run_prefix_}/{MANIFEST_NAME}"


def success_key(run_prefix_: str) -> str:
    """The empty marker written last: its presence means the run is complete."""
    return f"{run_prefix_}/{SUCCESS_NAME}"


@dataclass(frozen=True)
class RunObjectKey:
    """A key of the layout taken apart: which run it belongs to, and the object's name."""

    logical_date: date  # the dt= of its partition
    partition: str  # dt=...[/hour=...]
    run_id: str
    run_prefix: str
    name: str


def parse_run_object_key(pipeline_prefix_: str, key: str) -> RunObjectKey | None:
    """Take a key under a pipeline's prefix apart; None if it is not an object of a run."""
    base = f"{pipeline_prefix_}/" if pipeline_prefix_ else ""
    if not key.startswith(base):
        return None
    found = _RUN_OBJECT.match(key[len(base) :])
    if found is None:
        return None
    try:
        logical_date = date.fromisoformat(found.group(2))
    except ValueError:  # dt=2026-13-45
        return None
    name = found.group(4)
    return RunObjectKey(logical_date, found.group(1), found.group(3), key[: -len(name) - 1], name)
