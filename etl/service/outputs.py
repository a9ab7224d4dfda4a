"""Reading a pipeline's output from S3 alone, trusting only what the manifest vouches for.

    reader = build_run_reader(load_settings())   # etl.bootstrap
    run = reader.latest("orders_daily")          # the newest committed run
    for row in reader.rows(run):                 # each part checked before its rows
        ...

What a consumer reads depends on the pipeline's source mode (the manifest's ``mode``):
the latest run of a ``snapshot`` pipeline is the whole source (``latest``); each run of a
``partitioned`` one holds its interval (``partition("dt=2026-11-22")`` or
``partitions()``); each run of an ``incremental`` one holds the changes since the one
before (``partitions(since=...)``: every partition after the last one read).

A run is readable once its ``_manifest.json`` and ``_SUCCESS`` are both there. Each part
is downloaded whole (spooled to disk past 32 MiB), and its size and sha256 are compared
with the manifest before any of its rows is yielded; its row count is compared after.
No ledger access is needed: consumers need only list and get on the bucket.
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import IO, Any

from etl.domain.layout import pipeline_prefix
from etl.domain.outputs import (
    Manifest,
    ManifestError,
    ManifestPart,
    RunOutput,
    choose_latest,
    choose_partitions,
    group_runs,
    manifest_problems,
    parse_manifest,
    part_problems,
)
from etl.formats.encoding import FORMATS, read_part
from etl.service.ports import PartStore

READABLE_FORMATS = frozenset(FORMATS)
PART_SPOOL_BYTES = 32 * 1024 * 1024
_HASH_BLOCK = 1024 * 1024


class OutputError(Exception):
    """The output cannot be read as asked; the message says why."""


class RunNotFound(OutputError, LookupError):
    """No run (or no committed run) matches."""


class RunNotCommitted(OutputError):
    """The run has no ``_SUCCESS`` or no manifest: it must not be read."""


class IntegrityError(OutputError):
    """A manifest or a part is not what the manifest promises."""


@dataclass(frozen=True)
class CommittedRun:
    """A run with ``_SUCCESS`` and a manifest that matches where it was found."""

    output: RunOutput
    manifest: Manifest

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.output.run_id

    @property
    def logical_date(self) -> date:
        """The day of data the run holds."""
        return self.output.logical_date


@dataclass(frozen=True)
class PartCheck:
    """One part downloaded and compared with its manifest entry."""

    part: ManifestPart
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when size, sha256 and row count all match."""
        return not self.problems


@dataclass(frozen=True)
class Verification:
    """Every part of a run checked; objects under the run the manifest does not list."""

    parts: tuple[PartCheck, ...]
    unlisted: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every part matches (unlisted objects are ignored by readers)."""
        return all(check.ok for check in self.parts)


class RunReader:
    """Lists, resolves and reads the runs under ``<prefix>/<output path>/`` in one bucket."""

    def __init__(self, store: PartStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def uri(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.store.bucket}/{key}"

    def runs(self, output_path: str) -> list[RunOutput]:
        """Every run of a pipeline in the bucket, committed or not, newest first.

        ``output_path`` is the pipeline's output path: its name unless it sets
        ``output_prefix``."""
        base = pipeline_prefix(self.prefix, output_path)
        return group_runs(base, self.store.list_objects(base + "/"))

    def latest(self, output_path: str) -> CommittedRun:
        """The pipeline's newest committed run (newest logical date, then last committed)."""
        latest = choose_latest(self.runs(output_path))
        if latest is None:
            where = self.uri(pipeline_prefix(self.prefix, output_path))
            raise RunNotFound(f"no committed run under {where}/")
        return self.open(latest)

    def partitions(self, output_path: str, *, since: str | None = None) -> list[CommittedRun]:
        """The latest committed run of each partition (``dt=...`` or ``dt=.../hour=...``),
        oldest first; with ``since`` (a partition), only the partitions after it."""
        return [self.open(run) for run in choose_partitions(self.runs(output_path), since=since)]

    def partition(self, output_path: str, partition: str) -> CommittedRun:
        """The latest committed run of one partition, e.g. ``dt=2026-11-22/hour=14``."""
        for run in choose_partitions(self.runs(output_path)):
            if run.partition == partition:
                return self.open(run)
        where = self.uri(pipeline_prefix(self.prefix, output_path))
        raise RunNotFound(f"no committed run under {where}/{partition}/")

    def find(self, run_id: str, output_paths: Iterable[str]) -> RunOutput:
        """The run with this id under any of the pipelines' output paths."""
        searched = []
        for output_path in dict.fromkeys(output_paths):
            for run in self.runs(output_path):
                if run.run_id == run_id:
                    return run
            searched.append(self.uri(pipeline_prefix(self.prefix, output_path)) + "/")
        raise RunNotFound(f"no output of run {run_id} under {', '.join(searched) or 'nothing'}")

    def open(self, run: RunOutput) -> CommittedRun:
        """Read and check a committed run's manifest; refuses a run that is not committed."""
        if not run.committed:
            raise RunNotCommitted(
                f"run {run.run_id} at {self.uri(run.prefix)}/ is not committed "
                "(no _SUCCESS or no _manifest.json): its objects must not be read"
            )
        try:
            manifest = parse_manifest(self.store.get_bytes(run.manifest_key))
        except ManifestError as exc:
            raise IntegrityError(f"{self.uri(run.manifest_key)}: {exc}") from None
        problems = manifest_problems(manifest, run)
        if problems:
            raise IntegrityError(f"{self.uri(run.manifest_key)}: {'; '.join(problems)}")
        if manifest.format not in READABLE_FORMATS:
            raise OutputError(
                f"run {run.run_id} is {manifest.format}; this reader reads "
                + ", ".join(sorted(READABLE_FORMATS))
            )
        return CommittedRun(run, manifest)

    def rows(self, run: CommittedRun) -> Iterator[dict[str, Any]]:
        """Every row of the run, part by part in manifest order. A part's rows are
        yielded only once its size and sha256 match the manifest; IntegrityError
        otherwise, or after a part whose row count differs."""
        for part in run.manifest.parts:
            with self._download(part) as downloaded:
                size, sha256 = (None, None) if downloaded is None else downloaded[1:]
                problems = part_problems(part, size=size, sha256=sha256, rows=None)
                if problems or downloaded is None:
                    raise IntegrityError("; ".join(problems))
                count = 0
                for row in _decode(downloaded[0], run.manifest):
                    count += 1
                    yield row
                problems = part_problems(part, size=size, sha256=None, rows=count)
                if problems:
                    raise IntegrityError("; ".join(problems))

    def verify(self, run: CommittedRun) -> Verification:
        """Download every part and compare its size, sha256 and row count with the
        manifest; reports every problem rather than stopping at the first."""
        parts = run.manifest.parts
        checks = tuple(PartCheck(part, tuple(self._check(run, part))) for part in parts)
        listed = {p.key for p in run.manifest.parts}
        listed |= {run.output.manifest_key, run.output.success_key}
        unlisted = tuple(o.key for o in run.output.objects if o.key not in listed)
        return Verification(checks, unlisted)

    def _check(self, run: CommittedRun, part: ManifestPart) -> list[str]:
        with self._download(part) as downloaded:
            if downloaded is None:
                return part_problems(part, size=None, sha256=None, rows=None)
            spool, size, sha256 = downloaded
            try:
                rows = sum(1 for _ in _decode(spool, run.manifest))
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                undecodable = f"{part.key}: not {run.manifest.format} ({exc})"
                return [*part_problems(part, size=size, sha256=sha256, rows=None), undecodable]
            return part_problems(part, size=size, sha256=sha256, rows=rows)

    @contextmanager
    def _download(self, part: ManifestPart) -> Iterator[tuple[IO[bytes], int, str] | None]:
        """A part downloaded into a spooled file, with its size and sha256; None if the
        bucket has no object under that key."""
        with tempfile.SpooledTemporaryFile(max_size=PART_SPOOL_BYTES) as spool:
            if not self.store.download(part.key, spool):
                yield None
                return
            spool.seek(0)
            digest = hashlib.sha256()
            size = 0
            while block := spool.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
            yield spool, size, digest.hexdigest()


def _decode(spool: IO[bytes], manifest: Manifest) -> Iterator[dict[str, Any]]:
    spool.seek(0)
    yield from read_part(spool, manifest.format, manifest.schema)
