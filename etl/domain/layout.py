"""Where a run's objects live in the bucket; consumers rely on this layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

MANIFEST_NAME = "_manifest.json"
SUCCESS_NAME = "_SUCCESS"
# <pipeline prefix>/dt=<YYYY-MM-DD>/run=<run id>/<object name>: nothing deeper, nothing else.
_RUN_OBJECT = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})/run=([^/]+)/([^/]+)$")


def pipeline_prefix(prefix: str, pipeline: str) -> str:
    """``<prefix>/<pipeline>`` (no trailing slash): where all of a pipeline's runs live."""
    return "/".join(p.strip("/") for p in (prefix, pipeline) if p.strip("/"))


def run_prefix(prefix: str, pipeline: str, logical_date: date, run_id: str) -> str:
    """``<prefix>/<pipeline>/dt=<date>/run=<run_id>`` (no trailing slash); ``pipeline``
    is the pipeline's output path (its name unless it sets another)."""
    parts = [pipeline_prefix(prefix, pipeline), f"dt={logical_date.isoformat()}", f"run={run_id}"]
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

    logical_date: date
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
        logical_date = date.fromisoformat(found.group(1))
    except ValueError:  # dt=2026-13-45
        return None
    name = found.group(3)
    return RunObjectKey(logical_date, found.group(2), key[: -len(name) - 1], name)
