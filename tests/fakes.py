"""In-memory fakes of the service layer's ports (etl.service.ports), for unit tests.

``FakeLedger`` keeps the ledger's rules, not its SQL: states move forward only
(``RUN_STATE_ENTERED_FROM``), a terminal state never changes, a chunk starts and records
its part only while its run is planning or running, a queued run is admitted only where
its pipeline and its backfill have a place. Its clock is a ``FakeClock`` that a test
moves, so nothing waits. The same behaviours keep their tests on PostgreSQL
(tests/integration): these fakes let the service layer be tested in milliseconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from etl.config import Settings
from etl.domain.admission import Candidate, admissible, waits_for_a_place
from etl.domain.backfills import Backfill, Reprocess
from etl.domain.chunks import ChunkKey, ChunkRange, KeySpan, count_chunks, pick_boundaries
from etl.domain.dead_letters import DeadLetter, DeadLetterState
from etl.domain.errors import (
    BackfillConflict,
    BackfillNotFound,
    ChunkNotFound,
    DeadLetterNotFound,
    IdempotencyConflict,
    RunNotFound,
    WatermarkMoved,
)
from etl.domain.intervals import DataInterval
from etl.domain.outputs import StoredObject
from etl.domain.runs import (
    ACTIVE_RUN_STATES,
    CHUNK_WORK_RUN_STATES,
    RUN_STATE_ENTERED_FROM,
    TERMINAL_RUN_STATES,
    Chunk,
    ChunkFinish,
    ChunkStart,
    ChunkState,
    Run,
    RunState,
    Trigger,
)
from etl.domain.windows import CursorValue, CursorWindow, ReadScope, RunWindow
from etl.formats.encoding import PartStats
from etl.pipelines import Pipeline
from etl.service.lifecycle import RunService

if TYPE_CHECKING:
    import pyarrow as pa

    from etl.service.ports import LedgerPort, PartStore, RunPorts, SourceReader

START = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
_TEXT_KEPT = 2000  # the ledger's reason and error columns


def _fingerprint(pipeline: str, interval_name: str | None, params: Mapping[str, Any]) -> str:
    # What tells a repeated request from another one (the ledger hashes the same).
    return json.dumps([pipeline, interval_name, params], sort_keys=True)


class FakeClock:
    """A clock that moves only when told, a millisecond per reading (so every record
    has its own moment and "newest first" is well defined)."""

    def __init__(self, start: datetime = START) -> None:
        self.moment = start

    def __call__(self) -> datetime:
        self.moment += timedelta(milliseconds=1)
        return self.moment

    def advance(self, seconds: float) -> datetime:
        """Move the clock on; returns the new time."""
        self.moment += timedelta(seconds=seconds)
        return self.moment


class RecordingEnqueue:
    """The Enqueue port: remembers what would have been sent, or fails like a broker
    that refuses the publish while ``error`` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.error: Exception | None = None

    def __call__(self, name: str, args: list[Any]) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((name, args))


class FakeLedger:
    """The ledger in memory: runs, chunks, backfills, dead letters and watermarks."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.runs: dict[str, Run] = {}  # in creation order
        self.fingerprints: dict[str, str] = {}
        self.chunks: dict[tuple[str, int], Chunk] = {}
        self.chunk_updated: dict[tuple[str, int], datetime] = {}
        self.backfills: dict[str, Backfill] = {}
        self.watermarks: dict[str, CursorValue] = {}
        self.dead_letters: dict[int, DeadLetter] = {}

    # -- runs ---------------------------------------------------------------------------

    def create_run(
        self,
        *,
        pipeline: str,
        interval: DataInterval,
        logical_date: date,
        trigger: Trigger,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        interval_name: str | None = None,
    ) -> tuple[Run, bool]:
        """Record a queued run, or find the one this request duplicates: (run, created)."""
        fingerprint = _fingerprint(pipeline, interval_name, params)
        for run in self.runs.values():
            same_key = idempotency_key is not None and run.idempotency_key == idempotency_key
            same_slot = (
                trigger is Trigger.SCHEDULE
                and run.trigger is Trigger.SCHEDULE
                and (run.pipeline, run.interval.start) == (pipeline, interval.start)
            )
            if same_key and self.fingerprints[run.id] != fingerprint:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was already used for a different "
                    f"request (run {run.id})"
                )
            if same_key or same_slot:
                return run, False
        run = self._add_run(pipeline, interval, logical_date, trigger, params, idempotency_key)
        self.fingerprints[run.id] = fingerprint
        return run, True

    def _add_run(
        self,
        pipeline: str,
        interval: DataInterval,
        logical_date: date,
        trigger: Trigger,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        backfill_id: str | None = None,
    ) -> Run:
        moment = self.clock()
        run = Run(
            id=str(uuid.uuid4()),
            pipeline=pipeline,
            logical_date=logical_date,
            interval=interval,
            trigger=trigger,
            state=RunState.QUEUED,
            params=dict(params),
            idempotency_key=idempotency_key,
            created_at=moment,
            updated_at=moment,
            backfill_id=backfill_id,
        )
        self.runs[run.id] = run
        self.fingerprints[run.id] = _fingerprint(pipeline, str(logical_date), params)
        return run

    def get_run(self, run_id: str) -> Run:
        """The run with that id; raises RunNotFound."""
        try:
            return self.runs[run_id]
        except KeyError:
            raise RunNotFound(run_id) from None

    def move_run(self, run_id: str, to: RunState, **fields: Any) -> bool:
        """Move a run to ``to`` if its state allows it; False if it did not move."""
        run = self.get_run(run_id)
        if run.state not in RUN_STATE_ENTERED_FROM[to]:
            return False
        moment = self.clock()
        changes: dict[str, Any] = {"state": to, "updated_at": moment, **fields}
        if to is RunState.PLANNING:
            changes["started_at"] = moment
        if to in TERMINAL_RUN_STATES:
            changes["finished_at"] = moment
        self.runs[run_id] = dataclasses.replace(run, **changes)
        return True

    def claim_commit(self, run_id: str) -> bool:
        """A running run whose every chunk is done to committing; False otherwise."""
        run = self.get_run(run_id)
        if run.state is not RunState.RUNNING or run.chunk_count is None:
            return False
        if not self._every_chunk_done(run_id):
            return False
        return self.move_run(run_id, RunState.COMMITTING)

    def _every_chunk_done(self, run_id: str) -> bool:
        return all(chunk.state is ChunkState.DONE for chunk in self.get_chunks(run_id))

    def fail_run(self, run_id: str, reason: str) -> bool:
        """Fail a run that has not ended; False if it had."""
        return self.move_run(run_id, RunState.FAILED, reason=reason[:_TEXT_KEPT])

    def reopen_run(self, run_id: str) -> Run | None:
        """A failed run back to queued, its unfinished chunks pending with no attempts."""
        run = self.get_run(run_id)
        if run.state is not RunState.FAILED:
            return None
        moment = self.clock()
        self.runs[run_id] = dataclasses.replace(
            run,
            state=RunState.QUEUED,
            reason=None,
            started_at=None,
            finished_at=None,
            updated_at=moment,
        )
        for chunk in self.get_chunks(run_id):
            if chunk.state is not ChunkState.DONE:
                self._set_chunk(chunk, moment, state=ChunkState.PENDING, attempts=0, error=None)
        return self.runs[run_id]

    def succeed_run(self, run: Run, *, watermark: CursorWindow | None, **fields: Any) -> bool:
        """Mark a committing run succeeded and move the watermark, or nothing changes
        (WatermarkMoved when another run committed the window first)."""
        if self.get_run(run.id).state is not RunState.COMMITTING:
            return False
        if watermark is not None and watermark.high is not None:
            current = self.watermarks.get(run.pipeline)
            if current != watermark.low:
                raise WatermarkMoved(run.pipeline, watermark.low, current)
            self.watermarks[run.pipeline] = watermark.high
        moment = self.clock()
        self.runs[run.id] = dataclasses.replace(
            self.runs[run.id],
            state=RunState.SUCCEEDED,
            updated_at=moment,
            finished_at=moment,
            **fields,
        )
        return True

    def active_runs(self) -> list[Run]:
        """Every run that has not ended, oldest first."""
        return [run for run in self.runs.values() if not run.is_terminal]

    def last_activity(self, run_id: str) -> datetime:
        """When the run or any of its chunks last changed."""
        moments = [self.get_run(run_id).updated_at]
        moments += [moment for (rid, _), moment in self.chunk_updated.items() if rid == run_id]
        return max(moments)

    def watermark(self, pipeline: str) -> CursorValue | None:
        """The upper bound of the window the pipeline's last committed run read."""
        return self.watermarks.get(pipeline)

    # -- chunks -------------------------------------------------------------------------

    def record_plan(
        self, run_id: str, planned: Sequence[ChunkRange], window: RunWindow
    ) -> list[Chunk]:
        """Store a run's chunks and window once; a second call returns the first plan."""
        run = self.get_run(run_id)
        if run.chunk_count is not None:
            return self.get_chunks(run_id)
        moment = self.clock()
        for planned_chunk in planned:
            chunk = Chunk(
                run_id, planned_chunk.index, planned_chunk.key_lo, planned_chunk.key_hi,
                ChunkState.PENDING, key_hi_inclusive=planned_chunk.key_hi_inclusive,
            )  # fmt: skip
            self.chunks[(run_id, chunk.index)] = chunk
            self.chunk_updated[(run_id, chunk.index)] = moment
        self.runs[run_id] = dataclasses.replace(
            run, chunk_count=len(planned), window=window, updated_at=moment
        )
        return self.get_chunks(run_id)

    def get_chunks(self, run_id: str) -> list[Chunk]:
        """A run's chunks in index order."""
        return sorted(
            (chunk for (rid, _), chunk in self.chunks.items() if rid == run_id),
            key=lambda chunk: chunk.index,
        )

    def get_chunk(self, run_id: str, index: int) -> Chunk:
        """One chunk; raises ChunkNotFound."""
        try:
            return self.chunks[(run_id, index)]
        except KeyError:
            raise ChunkNotFound(f"run {run_id} has no chunk {index}") from None

    def start_chunk(self, run_id: str, index: int, worker: str | None = None) -> ChunkStart:
        """An attempt at a chunk not done, only while its run works; None if it ended."""
        run = self.get_run(run_id)
        chunk = self.get_chunk(run_id, index)
        if chunk.state is ChunkState.DONE:
            return ChunkStart(run, chunk)
        if not self._run_works(run_id):
            return ChunkStart(run, None)
        moment = self.clock()
        return ChunkStart(
            run,
            self._set_chunk(
                chunk,
                moment,
                state=ChunkState.RUNNING,
                attempts=chunk.attempts + 1,
                started_at=moment,
                error=None,
                worker=worker,
            ),
        )

    def finish_chunk(
        self,
        run_id: str,
        index: int,
        *,
        s3_key: str,
        stats: PartStats,
        rejected_by_reason: dict[str, int],
        etag: str | None = None,
    ) -> ChunkFinish:
        """Record a chunk's part once, while its run works; whether that left no chunk
        of the run undone."""
        chunk = self.get_chunk(run_id, index)
        if chunk.state is ChunkState.DONE or not self._run_works(run_id):
            return ChunkFinish(recorded=False)
        moment = self.clock()
        self._set_chunk(
            chunk,
            moment,
            state=ChunkState.DONE,
            s3_key=s3_key,
            etag=etag,
            rows=stats.rows,
            bytes=stats.bytes,
            sha256=stats.sha256,
            rows_rejected=sum(rejected_by_reason.values()),
            rejected_by_reason=dict(rejected_by_reason),
            error=None,
            finished_at=moment,
        )
        return ChunkFinish(recorded=True, completes_run=self._every_chunk_done(run_id))

    def release_chunk(self, run_id: str, index: int, reason: str) -> bool:
        """Put a running chunk of an ended run back to pending; False otherwise."""
        chunk = self.get_chunk(run_id, index)
        if chunk.state is not ChunkState.RUNNING or self._run_works(run_id):
            return False
        self._set_chunk(chunk, self.clock(), state=ChunkState.PENDING, error=reason[:_TEXT_KEPT])
        return True

    def fail_chunk(self, run_id: str, index: int, error: str) -> None:
        """Mark a chunk failed, unless it is done."""
        chunk = self.get_chunk(run_id, index)
        if chunk.state is not ChunkState.DONE:
            moment = self.clock()
            self._set_chunk(
                chunk, moment, state=ChunkState.FAILED, error=error[:_TEXT_KEPT], finished_at=moment
            )

    def invalidate_chunk(self, run_id: str, index: int, error: str) -> bool:
        """Mark a done chunk failed (its part is not as recorded); False if not done."""
        chunk = self.get_chunk(run_id, index)
        if chunk.state is not ChunkState.DONE:
            return False
        self._set_chunk(chunk, self.clock(), state=ChunkState.FAILED, error=error[:_TEXT_KEPT])
        return True

    def chunk_counts(self, run_id: str) -> dict[ChunkState, int]:
        """How many of a run's chunks are in each state."""
        counts = {state: 0 for state in ChunkState}
        for chunk in self.get_chunks(run_id):
            counts[chunk.state] += 1
        return counts

    def _run_works(self, run_id: str) -> bool:
        return self.get_run(run_id).state in CHUNK_WORK_RUN_STATES

    def _set_chunk(self, chunk: Chunk, moment: datetime, **changes: Any) -> Chunk:
        changed = dataclasses.replace(chunk, **changes)
        self.chunks[(chunk.run_id, chunk.index)] = changed
        self.chunk_updated[(chunk.run_id, chunk.index)] = moment
        return changed

    # -- admission ----------------------------------------------------------------------

    def admit_run(self, run_id: str, pipeline_limit: int | None) -> bool:
        """Move a queued run to planning if its pipeline and backfill have room."""
        run = self.get_run(run_id)
        if run.state is not RunState.QUEUED:
            return False
        candidate = Candidate(run.id, run.backfill_id)
        if not self._admissible([candidate], run.pipeline, pipeline_limit):
            return False
        return self.move_run(run_id, RunState.PLANNING)

    def runs_to_admit(self, pipeline: str, pipeline_limit: int | None) -> list[str]:
        """Queued runs of a pipeline that wait for a place and have one now, oldest
        logical date first (a run nothing limits is not waiting)."""
        queued = sorted(
            (
                r
                for r in self.runs.values()
                if r.pipeline == pipeline and r.state is RunState.QUEUED
            ),
            key=lambda r: (r.interval.start, r.created_at),
        )
        waiting = [
            candidate
            for candidate in (Candidate(r.id, r.backfill_id) for r in queued)
            if waits_for_a_place(candidate, pipeline_limit)
        ]
        return self._admissible(waiting, pipeline, pipeline_limit)

    def pipelines_with_queued_runs(self) -> list[str]:
        """Pipelines that have at least one queued run."""
        return sorted({r.pipeline for r in self.runs.values() if r.state is RunState.QUEUED})

    def _admissible(
        self, queued: list[Candidate], pipeline: str, pipeline_limit: int | None
    ) -> list[str]:
        active: dict[str | None, int] = {}
        for run in self.runs.values():
            if run.pipeline == pipeline and run.state in ACTIVE_RUN_STATES:
                active[run.backfill_id] = active.get(run.backfill_id, 0) + 1
        limits = {
            c.backfill_id: self.backfills[c.backfill_id].max_active
            for c in queued
            if c.backfill_id is not None
        }
        return admissible(
            queued, active=active, pipeline_limit=pipeline_limit, backfill_limits=limits
        )

    # -- backfills ----------------------------------------------------------------------

    def create_backfill(
        self,
        *,
        pipeline: str,
        start: date,
        end: date,
        max_active: int,
        reprocess: str,
        params: dict[str, Any],
        intervals: Sequence[tuple[DataInterval, date, str]],
        planned_on: Mapping[datetime, str | None] | None = None,
        covering: tuple[datetime, datetime] | None = None,
    ) -> tuple[Backfill, list[Run]]:
        """Record a backfill and a queued run per interval; BackfillConflict if the
        intervals' latest runs are no longer those it was planned on."""
        if planned_on is not None and covering is not None:
            now_latest = {
                moment: run.id
                for moment, run in self.latest_runs_by_interval(pipeline, *covering).items()
            }
            changed = sorted(
                moment
                for moment in set(now_latest) | set(planned_on)
                if now_latest.get(moment) != planned_on.get(moment)
            )
            if changed:
                raise BackfillConflict(
                    f"runs of {pipeline} for intervals starting "
                    f"{', '.join(m.isoformat() for m in changed[:5])} started "
                    "while this backfill was planned; plan it again"
                )
        backfill = Backfill(
            id=str(uuid.uuid4()),
            pipeline=pipeline,
            start=start,
            end=end,
            max_active=max_active,
            reprocess=Reprocess(reprocess),
            params=dict(params),
            created_at=self.clock(),
        )
        self.backfills[backfill.id] = backfill
        runs = [
            self._add_run(
                pipeline, interval, day, Trigger.BACKFILL, params, backfill_id=backfill.id
            )
            for interval, day, _ in intervals
        ]
        return backfill, runs

    def get_backfill(self, backfill_id: str) -> Backfill:
        """The backfill with that id; raises BackfillNotFound."""
        try:
            return self.backfills[backfill_id]
        except KeyError:
            raise BackfillNotFound(backfill_id) from None

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        """A backfill's runs in interval order."""
        runs = [run for run in self.runs.values() if run.backfill_id == backfill_id]
        return sorted(runs, key=lambda run: run.interval.start)

    def latest_runs_by_interval(
        self, pipeline: str, first: datetime, last: datetime
    ) -> dict[datetime, Run]:
        """The most recently created run of each interval starting in ``[first, last]``."""
        return {
            run.interval.start: run
            for run in self.runs.values()
            if run.pipeline == pipeline and first <= run.interval.start <= last
        }

    # -- dead letters -------------------------------------------------------------------

    def record_dead_letter(self, values: dict[str, Any]) -> tuple[int, bool]:
        """Record a parked message, or update the record of the same one: (id, created)."""
        values = {"body_size": len(values["body"]), "body_sha256": None, **values}
        moment = self.clock()
        for letter in self.dead_letters.values():
            if letter.fingerprint == values["fingerprint"]:
                self.dead_letters[letter.id] = dataclasses.replace(
                    letter,
                    reason=values["reason"],
                    death_reason=values["death_reason"],
                    death_count=max(letter.death_count, int(values["death_count"])),
                    state=DeadLetterState.DEAD,
                    last_seen_at=moment,
                    headers=values["headers"],
                    body=values["body"],
                    body_size=values["body_size"],
                    body_sha256=values["body_sha256"],
                )
                return letter.id, False
        new_id = len(self.dead_letters) + 1
        self.dead_letters[new_id] = DeadLetter(
            id=new_id,
            state=DeadLetterState.DEAD,
            first_seen_at=moment,
            last_seen_at=moment,
            replay_count=0,
            replayed_at=None,
            **values,
        )
        return new_id, True

    def list_dead_letters(
        self,
        *,
        state: DeadLetterState | None = DeadLetterState.DEAD,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; by default only those still dead."""
        letters = [
            letter
            for letter in self.dead_letters.values()
            if (state is None or letter.state is state)
            and (run_id is None or letter.run_id == run_id)
        ]
        return sorted(letters, key=lambda letter: letter.last_seen_at, reverse=True)[:limit]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter; raises LookupError."""
        try:
            return self.dead_letters[dead_letter_id]
        except KeyError:
            raise DeadLetterNotFound(dead_letter_id) from None

    def mark_dead_letter(
        self, dead_letter_id: int, to: DeadLetterState, *, replayed: bool = False
    ) -> bool:
        """Move a dead letter out of ``dead``; False if it was not dead."""
        letter = self.get_dead_letter(dead_letter_id)
        if letter.state is not DeadLetterState.DEAD:
            return False
        changes: dict[str, Any] = {"state": to}
        if replayed:
            changes |= {"replayed_at": self.clock(), "replay_count": letter.replay_count + 1}
        self.dead_letters[dead_letter_id] = dataclasses.replace(letter, **changes)
        return True

    def reopen_dead_letter(self, dead_letter_id: int) -> bool:
        """Put a replayed dead letter back to ``dead``."""
        letter = self.get_dead_letter(dead_letter_id)
        if letter.state is not DeadLetterState.REPLAYED:
            return False
        self.dead_letters[dead_letter_id] = dataclasses.replace(
            letter, state=DeadLetterState.DEAD, replay_count=letter.replay_count - 1
        )
        return True


@dataclass
class StoredBlob:
    """One object of a MemoryParts bucket."""

    data: bytes
    metadata: dict[str, str]
    written_at: datetime

    @property
    def etag(self) -> str:
        """As S3 shows a single-part object's ETag: its MD5 in quotes."""
        return '"' + hashlib.md5(self.data, usedforsecurity=False).hexdigest() + '"'


class MemoryParts:
    """A bucket in memory, for the PartStore port."""

    def __init__(self, bucket: str = "unit-bucket", clock: FakeClock | None = None) -> None:
        self.bucket = bucket
        self.clock = clock or FakeClock()
        self.objects: dict[str, StoredBlob] = {}

    def put_part(
        self, key: str, body: IO[bytes], *, content_type: str, sha256: str, rows: int
    ) -> str:
        """Store a part; refuses bytes that do not hash to ``sha256`` (as S3's checksum
        does); returns its ETag."""
        body.seek(0)
        data = body.read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"BadDigest: the part for {key} does not match its sha256")
        self.put(key, data, {"sha256": sha256, "rows": str(rows)})
        return self.objects[key].etag

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        """Store a small JSON document."""
        self.put(key, json.dumps(document, indent=2).encode("utf-8"))

    def put_marker(self, key: str) -> None:
        """Store an empty marker object."""
        self.put(key, b"")

    def part_metadata(self, key: str) -> dict[str, Any] | None:
        """The size, ETag and metadata of an object, or None if it does not exist."""
        blob = self.objects.get(key)
        if blob is None:
            return None
        return {"bytes": len(blob.data), "etag": blob.etag, **blob.metadata}

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix``, in key order."""
        return [
            StoredObject(key, len(blob.data), blob.written_at, blob.etag)
            for key, blob in sorted(self.objects.items())
            if key.startswith(prefix)
        ]

    def get_bytes(self, key: str) -> bytes:
        """The whole object; KeyError if there is none."""
        return self.objects[key].data

    def download(self, key: str, target: IO[bytes]) -> bool:
        """Write the object into ``target``; False if it does not exist."""
        blob = self.objects.get(key)
        if blob is None:
            return False
        target.write(blob.data)
        return True

    def delete_keys(self, keys: list[str]) -> None:
        """Delete objects (a missing one is no error, as in S3)."""
        for key in keys:
            self.objects.pop(key, None)

    # -- for tests: what a bucket's other writers (or decay) do ---------------------------

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Store (or overwrite) an object as another writer would."""
        self.objects[key] = StoredBlob(data, dict(metadata or {}), self.clock())

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix``, in order."""
        return [obj.key for obj in self.list_objects(prefix)]


class ListSource:
    """A pipeline's source as a list of rows (dicts), for the SourceReader port."""

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        key_column: str = "id",
        *,
        source_now: datetime = START,
        cursor_column: str | None = None,
    ) -> None:
        self.rows = [dict(row) for row in rows]
        self.key_column = key_column
        self.source_now = source_now  # the source database's clock
        self.cursor_column = cursor_column  # an integer cursor's, for cursor_max

    def key_span(self, window: ReadScope | None = None) -> KeySpan:
        """How many rows with a key (in the window), and their smallest and largest key."""
        keys = self._keys(window)
        return KeySpan(len(keys), keys[0], keys[-1]) if keys else KeySpan(0)

    def key_boundaries(
        self, chunk_size: int, span: KeySpan, window: ReadScope | None = None
    ) -> list[ChunkKey]:
        """The first key of each chunk when ``ceil(rows / chunk_size)`` chunks share the
        rows (in the window) with keys in ``[span.key_min, span.key_max]`` evenly, in key
        order, once each (etl.domain.chunks.chunk_starts)."""
        low, high = span.key_min, span.key_max
        return pick_boundaries(
            [key for key in self._keys(window) if low <= key <= high], chunk_size
        )

    def plan_keys(
        self, chunk_size: int, max_chunks: int, window: ReadScope | None = None
    ) -> tuple[KeySpan, list[ChunkKey]]:
        """The span, and its boundaries unless they would be more than max_chunks chunks."""
        span = self.key_span(window)
        if not span.rows or count_chunks(span.rows, chunk_size) > max_chunks:
            return span, []
        return span, self.key_boundaries(chunk_size, span, window)

    def _keys(self, window: ReadScope | None) -> list[Any]:
        return sorted(
            row[self.key_column]
            for row in self.rows
            if row[self.key_column] is not None and _in_window(row, window)
        )

    def cursor_upper_bound(self, lag_s: int) -> datetime:
        """The source's clock less the lag."""
        return self.source_now - timedelta(seconds=lag_s)

    def cursor_max(self, window: ReadScope | None = None) -> int | None:
        """The largest value of the integer cursor (None: no rows)."""
        assert self.cursor_column is not None, "ListSource(cursor_column=...) for cursor_max"
        values = [row[self.cursor_column] for row in self.rows if _in_window(row, window)]
        return max(values, default=None)

    def read_range(
        self,
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        batch_size: int,
        window: ReadScope | None = None,
        *,
        key_hi_inclusive: bool = False,
    ) -> Generator[list[dict[str, Any]]]:
        """The rows with ``key_lo <= key < key_hi`` (``<= key_hi`` when
        ``key_hi_inclusive``) in the window, in key order, in batches."""

        def in_range(key: Any) -> bool:
            if key is None or key < key_lo:
                return False
            return bool(key <= key_hi if key_hi_inclusive else key < key_hi)

        selected = sorted(
            (
                row
                for row in self.rows
                if in_range(row[self.key_column]) and _in_window(row, window)
            ),
            key=lambda row: row[self.key_column],
        )
        for start in range(0, len(selected), batch_size):
            yield [dict(row) for row in selected[start : start + batch_size]]

    @property
    def copies_text(self) -> bool:
        """Never: the columnar path needs PostgreSQL's COPY (tests/integration)."""
        return False

    def read_range_text(
        self,
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        window: ReadScope | None = None,
        *,
        key_hi_inclusive: bool = False,
    ) -> Iterator[pa.Table]:
        """Not offered (copies_text is False)."""
        raise NotImplementedError("ListSource has no COPY text; copies_text is False")


def _in_window(row: Mapping[str, Any], window: ReadScope | None) -> bool:
    # What SqlSource's WHERE keeps: the interval of a partitioned source, the cursor
    # window of an incremental one.
    if window is None:
        return True
    if window.time_column is not None:
        moment = row[window.time_column]
        if not window.interval.start <= moment < window.interval.end:
            return False
    if window.cursor is None:
        return True
    cursor = row[window.cursor.column]
    low = window.cursor.low
    return bool(cursor <= window.cursor.high and (low is None or cursor > low))


@dataclass
class FakeServices:
    """The RunPorts the steps of a run work with, all in memory: ``sources`` by
    pipeline name, and the real run lifecycle on the fake ledger and enqueue."""

    ledger: FakeLedger = field(default_factory=FakeLedger)
    parts: MemoryParts = field(default_factory=MemoryParts)
    settings: Settings = field(
        default_factory=lambda: Settings(s3_bucket="unit-bucket", s3_prefix="etl")
    )
    sources: dict[str, ListSource] = field(default_factory=dict)
    enqueue: RecordingEnqueue = field(default_factory=RecordingEnqueue)
    runs: RunService = field(init=False)

    def __post_init__(self) -> None:
        self.runs = RunService(self.ledger, self.enqueue)

    def source_for(self, pipeline: Pipeline) -> ListSource:
        """The rows given for this pipeline; KeyError naming it if none were."""
        try:
            return self.sources[pipeline.name]
        except KeyError:
            raise KeyError(f"no ListSource given for pipeline {pipeline.name}") from None


if TYPE_CHECKING:
    # mypy checks that the fakes fit the ports they stand in for.
    def _a(x: FakeLedger) -> LedgerPort:
        return x

    def _b(x: MemoryParts) -> PartStore:
        return x

    def _c(x: ListSource) -> SourceReader:
        return x

    def _d(x: FakeServices) -> RunPorts:
        return x
