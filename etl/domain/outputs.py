"""The consumer's view of the bucket: runs, which one is latest, what retention may
delete, and whether a manifest and its parts hold what they promise. Pure: callers
list and download, these functions decide."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from etl.domain.layout import (
    MANIFEST_NAME,
    SUCCESS_NAME,
    RunObjectKey,
    manifest_key,
    parse_run_object_key,
    success_key,
)
from etl.domain.manifest import MANIFEST_VERSION

# Manifest versions this code reads. A reader ignores fields it does not know, so adding
# fields keeps the version; removing or changing the meaning of one raises it.
SUPPORTED_MANIFEST_VERSIONS = frozenset({MANIFEST_VERSION})


@dataclass(frozen=True)
class StoredObject:
    """One object as a bucket listing reports it."""

    key: str
    size: int
    last_modified: datetime
    etag: str = ""  # as S3 reports it, quotes and all; changes when the bytes do


@dataclass(frozen=True)
class RunOutput:
    """Everything under one run's prefix, committed or not."""

    logical_date: date  # its partition's dt=
    run_id: str
    prefix: str
    objects: tuple[StoredObject, ...]
    partition: str = ""  # dt=...[/hour=...]: what a partition's consumer reads by

    def _named(self, name: str) -> StoredObject | None:
        return next((o for o in self.objects if o.key == f"{self.prefix}/{name}"), None)

    @property
    def manifest_key(self) -> str:
        """Where the run's manifest is (or would be)."""
        return manifest_key(self.prefix)

    @property
    def success_key(self) -> str:
        """Where the run's ``_SUCCESS`` marker is (or would be)."""
        return success_key(self.prefix)

    @property
    def committed(self) -> bool:
        """True once both the manifest and ``_SUCCESS`` are there: only then may it be read."""
        return self._named(MANIFEST_NAME) is not None and self._named(SUCCESS_NAME) is not None

    @property
    def committed_at(self) -> datetime | None:
        """When ``_SUCCESS`` was written, for a committed run."""
        marker = self._named(SUCCESS_NAME)
        return marker.last_modified if marker is not None and self.committed else None

    @property
    def last_written(self) -> datetime:
        """When the newest of its objects was written."""
        return max(o.last_modified for o in self.objects)

    @property
    def total_bytes(self) -> int:
        """The size of all its objects together."""
        return sum(o.size for o in self.objects)


def group_runs(pipeline_prefix: str, objects: Iterable[StoredObject]) -> list[RunOutput]:
    """The objects under a pipeline's prefix grouped by run, newest first; keys that do
    not follow the layout are left out."""
    grouped: dict[str, tuple[RunObjectKey, list[StoredObject]]] = {}
    for stored in objects:
        parsed = parse_run_object_key(pipeline_prefix, stored.key)
        if parsed is None:
            continue
        grouped.setdefault(parsed.run_prefix, (parsed, []))[1].append(stored)
    runs = [
        RunOutput(
            parsed.logical_date,
            parsed.run_id,
            prefix,
            tuple(sorted(found, key=lambda o: o.key)),
            parsed.partition,
        )
        for prefix, (parsed, found) in grouped.items()
    ]
    return sorted(runs, key=_recency, reverse=True)


def _recency(run: RunOutput) -> tuple[date, str, datetime, str]:
    return (run.logical_date, run.partition, run.committed_at or run.last_written, run.run_id)


def choose_latest(runs: Iterable[RunOutput]) -> RunOutput | None:
    """The committed run of the newest partition; of several for one partition, the one
    committed last. Never a run without ``_SUCCESS``; None if none is committed. What a
    consumer of a snapshot pipeline reads."""
    committed = [run for run in runs if run.committed]
    return max(committed, key=_recency) if committed else None


def choose_partitions(runs: Iterable[RunOutput], *, since: str | None = None) -> list[RunOutput]:
    """The latest committed run of each partition (``dt=...``, ``dt=.../hour=...``),
    oldest partition first; with ``since``, only the partitions after it. What a consumer
    of a partitioned pipeline reads (each run holds its interval's rows), and of an
    incremental one (each run holds the changes since the one before)."""
    latest: dict[str, RunOutput] = {}
    for run in runs:
        if not run.committed or (since is not None and run.partition <= since):
            continue
        kept = latest.get(run.partition)
        if kept is None or _recency(run) > _recency(kept):
            latest[run.partition] = run
    return [latest[partition] for partition in sorted(latest)]


def choose_prunable(runs: Iterable[RunOutput], *, now: datetime, keep_days: int) -> list[RunOutput]:
    """The runs retention deletes: logical date more than ``keep_days`` days before
    ``now``'s date and nothing written in the last ``keep_days`` days (so an old date
    backfilled today stays, as does a run still writing). Never the latest committed run."""
    if keep_days < 1:
        raise ValueError("keep_days must be at least 1")
    runs = list(runs)
    latest = choose_latest(runs)
    oldest_kept_date = now.date() - timedelta(days=keep_days)
    written_before = now - timedelta(days=keep_days)
    return [
        run
        for run in runs
        if run is not latest
        and run.logical_date < oldest_kept_date
        and run.last_written < written_before
    ]


class ManifestError(ValueError):
    """A manifest this reader cannot trust: unreadable, of an unknown version, or not
    matching the run it was found in."""


@dataclass(frozen=True)
class ManifestPart:
    """One part as the manifest promises it."""

    key: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The fields of a manifest a reader relies on, plus the whole document."""

    version: int
    pipeline: str
    run_id: str
    logical_date: date
    format: str
    parts: tuple[ManifestPart, ...]
    total_rows: int
    document: dict[str, Any]

    @property
    def partition(self) -> str | None:
        """The partition the run was written under (manifests before intervals: None)."""
        value = self.document.get("partition")
        return value if isinstance(value, str) else None

    @property
    def schema(self) -> tuple[tuple[str, str], ...]:
        """(name, type) of each column, as the manifest lists them."""
        columns = self.document.get("schema") or []
        return tuple(
            (str(column["name"]), str(column.get("type", "string")))
            for column in columns
            if isinstance(column, dict) and "name" in column
        )


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    # bool is an int in Python; a row count of true is still wrong.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"manifest field {name!r} is missing or not a {kind.__name__}")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """Read a manifest, refusing versions this code does not know and missing fields."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"manifest is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ManifestError("manifest is not a JSON object")
    version = _field(document, "manifest_version", int)
    if version not in SUPPORTED_MANIFEST_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_MANIFEST_VERSIONS))
        raise ManifestError(
            f"manifest_version {version} is not supported (this reader: {supported})"
        )
    try:
        logical_date = date.fromisoformat(_field(document, "logical_date", str))
    except ValueError:
        raise ManifestError("manifest field 'logical_date' is not YYYY-MM-DD") from None
    parts = []
    for index, part in enumerate(_field(document, "parts", list)):
        if not isinstance(part, dict):
            raise ManifestError(f"manifest part {index} is not an object")
        parts.append(
            ManifestPart(
                key=_field(part, "key", str),
                rows=_field(part, "rows", int),
                bytes=_field(part, "bytes", int),
                sha256=_field(part, "sha256", str),
            )
        )
    return Manifest(
        version=version,
        pipeline=_field(document, "pipeline", str),
        run_id=_field(document, "run_id", str),
        logical_date=logical_date,
        format=_field(document, "format", str),
        parts=tuple(parts),
        total_rows=_field(document, "total_rows", int),
        document=document,
    )


def manifest_problems(manifest: Manifest, run: RunOutput) -> list[str]:
    """Where a manifest disagrees with the run it was found in, or with itself."""
    problems = []
    if manifest.run_id != run.run_id:
        problems.append(f"manifest names run {manifest.run_id}, found under run={run.run_id}")
    if manifest.partition is not None:
        if manifest.partition != run.partition:
            problems.append(
                f"manifest names partition {manifest.partition}, found under {run.partition}"
            )
    elif manifest.logical_date != run.logical_date:
        problems.append(
            f"manifest names logical date {manifest.logical_date}, "
            f"found under dt={run.logical_date}"
        )
    outside = [p.key for p in manifest.parts if not p.key.startswith(run.prefix + "/")]
    if outside:
        problems.append(f"manifest lists parts outside the run: {', '.join(outside)}")
    counted = sum(p.rows for p in manifest.parts)
    if counted != manifest.total_rows:
        problems.append(
            f"manifest total_rows is {manifest.total_rows}, its parts add up to {counted}"
        )
    return problems


def part_problems(
    part: ManifestPart, *, size: int | None, sha256: str | None, rows: int | None
) -> list[str]:
    """How a downloaded part differs from its manifest entry (None: not measured)."""
    if size is None:
        return [f"{part.key}: missing"]
    problems = []
    if size != part.bytes:
        problems.append(f"{part.key}: {size} bytes, manifest says {part.bytes}")
    if sha256 is not None and sha256 != part.sha256:
        problems.append(f"{part.key}: sha256 {sha256}, manifest says {part.sha256}")
    if rows is not None and rows != part.rows:
        problems.append(f"{part.key}: {rows} rows, manifest says {part.rows}")
    return problems
