"""The ports of the service layer: what it needs from its adapters, as Protocols.

The adapters (``etl.adapters.ledger.Ledger``, ``etl.adapters.s3.S3PartWriter``,
``etl.adapters.db.SqlSource``, Celery's ``send_task``) fit these structurally, and so do
the in-memory fakes of ``tests/fakes.py``, on which the service layer is unit tested.
Only what ``etl/service/*.py`` calls is here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from etl.config import Settings
from etl.domain.backfills import Backfill
from etl.domain.chunks import ChunkKey, ChunkRange, KeySpan
from etl.domain.dead_letters import DeadLetter, DeadLetterState
from etl.domain.intervals import DataInterval
from etl.domain.outputs import StoredObject
from etl.domain.runs import Chunk, ChunkFinish, ChunkStart, ChunkState, Run, RunState, Trigger
from etl.domain.windows import CursorValue, CursorWindow, ReadScope, RunWindow
from etl.formats.encoding import PartStats
from etl.pipelines import Pipeline

if TYPE_CHECKING:
    import pyarrow as pa

# Sends a task by name with positional JSON arguments; raises if the broker refused it.
Enqueue = Callable[[str, list[Any]], None]


class RunLedger(Protocol):
    """Runs: created, read, and moved forward only (terminal states never change)."""

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
        ...

    def get_run(self, run_id: str) -> Run:
        """The run with that id; raises RunNotFound."""
        ...

    def move_run(self, run_id: str, to: RunState, **fields: Any) -> bool:
        """Move a run to ``to`` if its state allows it; False if it did not move."""
        ...

    def claim_commit(self, run_id: str) -> bool:
        """Move a running run whose every chunk is done to committing; True for the one
        call of any number at once that moved it."""
        ...

    def fail_run(self, run_id: str, reason: str) -> bool:
        """Fail a run that has not ended; False if it had."""
        ...

    def reopen_run(self, run_id: str) -> Run | None:
        """A failed run back to queued for a retry, its unfinished chunks pending; None
        if it was not failed."""
        ...

    def succeed_run(self, run: Run, *, watermark: CursorWindow | None, **fields: Any) -> bool:
        """Mark a committing run succeeded and move the pipeline's watermark from the
        window's low to its high; raises WatermarkMoved."""
        ...

    def active_runs(self) -> list[Run]:
        """Every run that has not ended, oldest first."""
        ...

    def last_activity(self, run_id: str) -> datetime:
        """When the run or any of its chunks last changed."""
        ...

    def watermark(self, pipeline: str) -> CursorValue | None:
        """The upper bound of the window the pipeline's last committed run read."""
        ...


class ChunkLedger(Protocol):
    """A run's plan and its chunks."""

    def record_plan(
        self, run_id: str, planned: Sequence[ChunkRange], window: RunWindow
    ) -> list[Chunk]:
        """Store a run's chunks and window once; a second call returns the first plan."""
        ...

    def get_chunks(self, run_id: str) -> list[Chunk]:
        """A run's chunks in index order."""
        ...

    def get_chunk(self, run_id: str, index: int) -> Chunk:
        """One chunk; raises ChunkNotFound."""
        ...

    def start_chunk(self, run_id: str, index: int, worker: str | None = None) -> ChunkStart:
        """Count an attempt at a chunk not done, only while its run is active; the run,
        and the chunk as it is now (None when the run has ended and the chunk is not
        done). Raises RunNotFound, ChunkNotFound."""
        ...

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
        """Record a chunk's part; ``recorded`` only for the delivery that recorded it while
        its run was active, and ``completes_run`` for the one whose record left no chunk
        of the run undone (exactly one, however many finish at once)."""
        ...

    def release_chunk(self, run_id: str, index: int, reason: str) -> bool:
        """Put a running chunk of an ended run back to pending, its part unrecorded;
        False if it is not running or its run works again."""
        ...

    def fail_chunk(self, run_id: str, index: int, error: str) -> None:
        """Mark a chunk failed, unless it is done."""
        ...

    def invalidate_chunk(self, run_id: str, index: int, error: str) -> bool:
        """Mark a done chunk failed (its part is not as recorded); False if not done."""
        ...

    def chunk_counts(self, run_id: str) -> dict[ChunkState, int]:
        """How many of a run's chunks are in each state."""
        ...


class AdmissionLedger(Protocol):
    """Places of max_active_runs and of backfills: which queued run may start."""

    def admit_run(self, run_id: str, pipeline_limit: int | None) -> bool:
        """Move a queued run to planning if its pipeline and backfill have room."""
        ...

    def runs_to_admit(self, pipeline: str, pipeline_limit: int | None) -> list[str]:
        """Queued runs of a pipeline that wait for a place and have one now."""
        ...

    def pipelines_with_queued_runs(self) -> list[str]:
        """Pipelines that have at least one queued run."""
        ...


class BackfillLedger(Protocol):
    """Backfills and their runs."""

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
        """Record a backfill and a queued run per interval; raises BackfillConflict."""
        ...

    def get_backfill(self, backfill_id: str) -> Backfill:
        """The backfill with that id; raises BackfillNotFound."""
        ...

    def backfill_runs(self, backfill_id: str) -> list[Run]:
        """A backfill's runs in logical date order."""
        ...

    def latest_runs_by_interval(
        self, pipeline: str, first: datetime, last: datetime
    ) -> dict[datetime, Run]:
        """The most recently created run of each interval starting in ``[first, last]``."""
        ...


class DeadLetterLedger(Protocol):
    """The record of messages the broker parked."""

    def record_dead_letter(self, values: dict[str, Any]) -> tuple[int, bool]:
        """Record a parked message, or update the record of the same one: (id, created)."""
        ...

    def list_dead_letters(
        self,
        *,
        state: DeadLetterState | None = DeadLetterState.DEAD,
        run_id: str | None = None,
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; by default only those still dead."""
        ...

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter; raises LookupError."""
        ...

    def mark_dead_letter(
        self, dead_letter_id: int, to: DeadLetterState, *, replayed: bool = False
    ) -> bool:
        """Move a dead letter out of ``dead``; False if it was not dead."""
        ...

    def reopen_dead_letter(self, dead_letter_id: int) -> bool:
        """Put a dead letter whose replay could not be sent back to ``dead``."""
        ...


class LedgerPort(
    RunLedger, ChunkLedger, AdmissionLedger, BackfillLedger, DeadLetterLedger, Protocol
):
    """The whole ledger as the service layer uses it."""


class PartStore(Protocol):
    """The bucket a run's parts, manifest and ``_SUCCESS`` go to, and are read from."""

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        ...

    def put_part(
        self, key: str, body: IO[bytes], *, content_type: str, sha256: str, rows: int
    ) -> str:
        """Upload a part, checked against its sha256; returns its ETag."""
        ...

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        """Upload a small JSON document."""
        ...

    def put_marker(self, key: str) -> None:
        """Upload an empty marker object."""
        ...

    def part_metadata(self, key: str) -> dict[str, Any] | None:
        """The size and metadata of an object, or None if it does not exist."""
        ...

    def list_objects(self, prefix: str) -> list[StoredObject]:
        """Every object under ``prefix``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        ...

    def download(self, key: str, target: IO[bytes]) -> bool:
        """Write the object into ``target``; False if it does not exist."""
        ...

    def delete_keys(self, keys: list[str]) -> None:
        """Delete objects; raises if any is refused."""
        ...


class SourceReader(Protocol):
    """A pipeline's source: its rows and keys to plan chunks by, and its rows one key
    range at a time."""

    def key_span(self, window: ReadScope | None = None) -> KeySpan:
        """How many rows with a key (in the window), and their smallest and largest key."""
        ...

    def plan_keys(
        self, chunk_size: int, max_chunks: int, window: ReadScope | None = None
    ) -> tuple[KeySpan, list[ChunkKey]]:
        """The span of the keys (in the window), and the first key of each chunk when
        ``ceil(rows / chunk_size)`` chunks share the rows evenly, in key order, once each
        (etl.domain.chunks.chunk_starts); no boundaries when those would be more than
        ``max_chunks`` chunks. A source that knows its key to be a unique integer with
        few gaps may plan it from its ends instead: a span not ``counted``, in chunks of
        ``chunk_size`` keys (etl.domain.chunks.plan_from_key_ends)."""
        ...

    def cursor_upper_bound(self, lag_s: int) -> datetime:
        """The source's clock less the lag: the upper end of a window planned now."""
        ...

    def cursor_max(self, window: ReadScope | None = None) -> int | None:
        """The largest value of an integer cursor now (None: the source is empty)."""
        ...

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
        ...

    @property
    def copies_text(self) -> bool:
        """Whether read_range_text works here."""
        ...

    def read_range_text(
        self,
        key_lo: ChunkKey,
        key_hi: ChunkKey,
        window: ReadScope | None = None,
        *,
        key_hi_inclusive: bool = False,
    ) -> Iterator[pa.Table]:
        """The rows of read_range as text, in Arrow tables (the columnar path)."""
        ...


class RunEndings(Protocol):
    """How the steps end a run: through the run lifecycle (``etl.service.lifecycle``),
    which counts it once and admits the runs waiting behind it."""

    def end_run(self, run_id: str, state: RunState, reason: str) -> Run:
        """Fail or cancel a run that has not ended; the run as it is now."""
        ...

    def run_succeeded(self, run: Run) -> None:
        """Count a run the commit just recorded succeeded, and admit those waiting."""
        ...

    def commit_if_complete(self, run_id: str, *, again: bool = False) -> bool:
        """Send the commit of a run whose every chunk is done, once; whether it was sent."""
        ...


class RunPorts(Protocol):
    """What the steps of a run work with (``etl.bootstrap.Services`` is one)."""

    @property
    def settings(self) -> Settings:
        """The deployment's settings."""
        ...

    @property
    def ledger(self) -> LedgerPort:
        """The ledger."""
        ...

    @property
    def parts(self) -> PartStore:
        """Where parts go."""
        ...

    @property
    def runs(self) -> RunEndings:
        """The run lifecycle: the only way a step ends a run."""
        ...

    def source_for(self, pipeline: Pipeline) -> SourceReader:
        """The reader of a pipeline's source."""
        ...
