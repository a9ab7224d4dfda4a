"""The three steps of a run (plan, transform a chunk, commit), free of Celery.

Each step is safe to run twice: it reads the ledger first and skips what is recorded.
The tasks in ``etl.worker.tasks`` wrap these with Celery's retries and routing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from etl import metrics
from etl.domain.chunks import check_chunk_count, plan_chunks
from etl.domain.clock import utc_now
from etl.domain.errors import PlanTooLarge, WatermarkMoved
from etl.domain.layout import manifest_key, part_key, partition_path, run_prefix, success_key
from etl.domain.manifest import build_manifest
from etl.domain.runs import (
    Chunk,
    ChunkState,
    Run,
    RunState,
    chunk_result,
    commit_problems,
    part_result,
)
from etl.domain.windows import (
    CursorValue,
    CursorWindow,
    ReadScope,
    RunWindow,
    why_nothing_was_read,
)
from etl.formats.columnar import sql_table, transform_table
from etl.formats.encoding import FORMATS, make_writer
from etl.pipelines import Pipeline, get_pipeline
from etl.service.ports import RunPorts, SourceReader

logger = logging.getLogger(__name__)

# Rows fetched and transformed at a time: memory stays at one batch per worker process.
READ_BATCH_ROWS = 5000
# A chunk started this many times is given up: a message that kills its worker (out of
# memory, the hard time limit) is redelivered each time and would loop for ever.
MAX_CHUNK_ATTEMPTS = 10
# A part is spooled in memory up to this size, then on disk, before it is uploaded.
SPOOL_MAX_BYTES = 32 * 1024 * 1024
# Chunk messages go out this many at a time, with one wait for the broker's confirms per
# batch, and the run is read again between batches, so a cancel stops the publishing
# within one batch (about 0.2 s of publishing here).
DISPATCH_BATCH = 500


class ChunkAttemptsExhausted(RuntimeError):
    """A chunk keeps being started and never finishes; a permanent error."""


def read_scope(pipeline: Pipeline, run: Run, cursor: CursorWindow | None) -> ReadScope:
    """What every query of a run binds and filters by: at planning and in each chunk."""
    return ReadScope(
        interval=run.interval,
        logical_date=run.logical_date,
        params=run.params,
        time_column=pipeline.source.time_column,
        cursor=cursor,
    )


def cursor_window_now(
    pipeline: Pipeline, source: SourceReader, scope: ReadScope, watermark: CursorValue | None
) -> ReadScope:
    """``scope`` with the cursor window an incremental pipeline reads if planned now:
    (watermark, the source's clock less the lag] for a timestamp cursor, (watermark, the
    largest value] for an integer one; ``scope`` itself for other pipelines."""
    column = pipeline.source.cursor_column
    if column is None:
        return scope
    high: CursorValue | None
    if pipeline.source.cursor_type == "integer":
        # Never below the watermark (rows deleted since, or none yet): the window is
        # empty then, and the watermark stays where it is.
        high = source.cursor_max(scope)
        if isinstance(watermark, int) and (high is None or high < watermark):
            high = watermark
    else:
        high = source.cursor_upper_bound(pipeline.source.cursor_lag_s)
    return dataclasses.replace(scope, cursor=CursorWindow(column, watermark, high))


def output_prefix(services: RunPorts, pipeline: Pipeline, run: Run) -> str:
    """Where a run's objects go: its pipeline's path, its interval's partition, its id."""
    partition = partition_path(pipeline.grain, run.interval)
    return run_prefix(services.settings.s3_prefix, pipeline.output_path, partition, run.id)


def plan_run(services: RunPorts, run_id: str) -> list[Chunk] | None:
    """Plan a queued run: fix its window, record its chunks, move it to running. A
    retried run, queued again with its plan, keeps that plan and window.

    Returns the chunks that still need a transform task, or None when the run has
    nothing to dispatch (it ended, was cancelled, or waits queued because its pipeline
    or backfill already has its most active runs). A run already running is returned
    its unfinished chunks again: re-dispatching them is harmless, losing them is not.
    A plan of more than ``max_chunks_per_run`` chunks records nothing: the run is
    failed with the reason, and PlanTooLarge raised.
    """
    ledger = services.ledger
    run = ledger.get_run(run_id)
    pipeline = get_pipeline(run.pipeline)
    if run.state is RunState.QUEUED and not ledger.admit_run(run_id, pipeline.max_active_runs):
        logger.info("run %s waits: %s has no free place", run_id, run.pipeline)
        return None
    run = ledger.get_run(run_id)
    if run.state is RunState.PLANNING and run.chunk_count is not None:
        # A retried run keeps its plan and its window: its chunks read what they first did.
        chunks = ledger.get_chunks(run_id)
        ledger.move_run(run_id, RunState.RUNNING)
        logger.info("resumed run %s: %d chunks planned before", run_id, len(chunks))
    elif run.state is RunState.PLANNING:
        source = services.source_for(pipeline)
        # Fixed now, so every chunk reads the same window whenever it runs.
        scope = cursor_window_now(
            pipeline, source, read_scope(pipeline, run, None), ledger.watermark(pipeline.name)
        )
        cursor_window = scope.cursor
        chunk_size = pipeline.chunk_size_for(run.params)
        max_chunks = services.settings.max_chunks_per_run
        # The rows and their keys, and the boundaries of chunks that share the rows evenly
        # (chunk_size at most), bounded by keys in the data; none if they are too many.
        span, boundaries = source.plan_keys(chunk_size, max_chunks, scope)
        key_min, key_max = span.key_min, span.key_max
        try:
            check_chunk_count(pipeline.name, span.rows, chunk_size, max_chunks)
        except PlanTooLarge as refused:
            # Counted from the rows: not one chunk recorded or sent.
            logger.warning("run %s refused: %s", run_id, refused)
            services.runs.end_run(run_id, RunState.FAILED, f"plan refused: {refused}")
            raise
        planned = plan_chunks(span, boundaries)
        window = RunWindow(pipeline.source.key_column, key_min, key_max, cursor_window)
        chunks = ledger.record_plan(run_id, planned, window)
        ledger.move_run(run_id, RunState.RUNNING)
        if not chunks:  # an empty run says why, in the log as in `etl status`
            source_def = pipeline.source
            logger.info(
                "run %s reads nothing: %s",
                run_id,
                why_nothing_was_read(
                    window,
                    run.interval,
                    time_column=source_def.time_column,
                    cursor_lag_s=source_def.cursor_lag_s,
                ),
            )
        logger.info(
            "planned run %s (%s, %s): %d chunks over keys %s..%s",
            run_id,
            pipeline.source.mode,
            pipeline.grain.name(run.interval),
            len(chunks),
            key_min,
            key_max,
        )
    elif run.state is RunState.RUNNING:
        chunks = ledger.get_chunks(run_id)
    else:
        return None
    return [chunk for chunk in chunks if chunk.state is not ChunkState.DONE]


class ChunkDispatch:
    """The chunks of a running run to publish, a batch at a time.

    Between batches the run is read again, and iteration stops once it is no longer
    running (cancelled, failed by a chunk, or finished by a twin dispatch), so a cancel
    stops the publishing of a large plan. ``sent`` counts the chunks handed out; the
    publisher waits for the broker's confirms once per batch (``batches``).
    """

    def __init__(
        self,
        services: RunPorts,
        run_id: str,
        chunks: list[Chunk],
        batch_size: int = DISPATCH_BATCH,
    ) -> None:
        self.services = services
        self.run_id = run_id
        self.chunks = chunks
        self.batch_size = batch_size
        self.sent = 0

    def batches(self) -> Iterator[list[Chunk]]:
        """The chunks in batches of ``batch_size``, while the run is running."""
        for start in range(0, len(self.chunks), self.batch_size):
            if start:
                state = self._run_state()
                if state is not None and state is not RunState.RUNNING:
                    logger.info(
                        "run %s is %s: stopped dispatching after %d of %d chunks",
                        self.run_id,
                        state.value,
                        self.sent,
                        len(self.chunks),
                    )
                    return
            batch = self.chunks[start : start + self.batch_size]
            self.sent += len(batch)
            yield batch

    def _run_state(self) -> RunState | None:
        try:
            return self.services.ledger.get_run(self.run_id).state
        except Exception:
            # Not knowing, keep publishing: a chunk of a cancelled run skips itself at
            # once, while a dispatch cut short by a failed read loses chunks until the
            # reconciler re-sends them.
            logger.warning("could not read run %s between batches", self.run_id, exc_info=True)
            return None


def transform_chunk(
    services: RunPorts,
    run_id: str,
    index: int,
    worker: str | None = None,
    *,
    redelivered: bool = False,
) -> dict[str, Any] | None:
    """Read a chunk's key range, transform it and write its part; returns the part's
    key, rows, bytes and sha256. A chunk already done returns its recorded part; a chunk
    of a run that is not planning or running starts nothing and returns None.

    The delivery whose part completes the run sends its commit. So does one that finds
    its chunk already done (another delivery, or its own first one that died before it
    sent the commit): with ``redelivered`` (a message delivered again, or a retry) a run
    already committing is sent its commit again, which is harmless."""
    ledger = services.ledger
    began = time.monotonic()
    # An attempt, unless the chunk is done; None once the run is no longer planning or
    # running (failed, cancelled, queued again): then no new work and nothing counted.
    started = ledger.start_chunk(run_id, index, worker)
    run, chunk = started.run, started.chunk
    if chunk is None:
        logger.info("run %s is not running: chunk %d not started", run_id, index)
        return None
    if chunk.state is ChunkState.DONE:
        services.runs.commit_if_complete(run_id, again=redelivered)
        return chunk_result(chunk)
    if chunk.attempts > MAX_CHUNK_ATTEMPTS:
        raise ChunkAttemptsExhausted(
            f"chunk {index} was started {chunk.attempts} times without finishing "
            "(its worker died or hit the hard time limit each time)"
        )

    pipeline = get_pipeline(run.pipeline)
    source = services.source_for(pipeline)
    prefix = output_prefix(services, pipeline, run)
    key = part_key(prefix, index, pipeline.output_format)
    rejected: Counter[str] = Counter()
    # Every record is checked against the schema on its way to the part (the writer
    # conforms records and tables): one that does not match raises SchemaMismatch naming
    # the pipeline and the field, a bug in the transform that fails the chunk for good.
    schema = pipeline.record_schema
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES) as spool:
        writer = make_writer(pipeline.output_format, spool, schema, pipeline.compression_level)
        try:
            window = read_scope(pipeline, run, run.window.cursor if run.window else None)
            columnar = pipeline.columnar_transform
            if source.copies_text and (pipeline.sql_only or columnar is not None):
                # The fast path: COPY's text in Arrow tables, no Python object per row. A
                # SQL-only pipeline's columns are cast to the schema's types and written; a
                # columnar transform takes the plain rows and the row transform the rest.
                for table in source.read_range_text(
                    chunk.key_lo, chunk.key_hi, window, key_hi_inclusive=chunk.key_hi_inclusive
                ):
                    if columnar is None:
                        writer.write_table(sql_table(table, schema))
                        continue
                    records, rejected_here = transform_table(
                        table, columnar, pipeline.row_transform, schema
                    )
                    writer.write_table(records)
                    rejected.update(rejected_here)
            else:
                # The row path (a SQL-only pipeline on a source without COPY: its columns as
                # they are, read as their types).
                transform = pipeline.row_transform
                for batch in source.read_range(
                    chunk.key_lo,
                    chunk.key_hi,
                    READ_BATCH_ROWS,
                    window,
                    key_hi_inclusive=chunk.key_hi_inclusive,
                ):
                    result = transform(batch)
                    writer.write_records(result.records)
                    rejected.update(result.rejected_by_reason())
        except BaseException:
            # A part given up (a record that does not match, a failed read): finish the
            # writer here, so it does not write to the closed spool when it is collected.
            with contextlib.suppress(Exception):
                writer.close()
            raise
        stats = writer.close()
        etag = services.parts.put_part(
            key,
            spool,
            content_type=FORMATS[pipeline.output_format],
            sha256=stats.sha256,
            rows=stats.rows,
        )
    finish = ledger.finish_chunk(
        run_id, index, s3_key=key, stats=stats, rejected_by_reason=dict(rejected), etag=etag
    )
    if finish.recorded:  # counted once, by the delivery that recorded the chunk
        rejected_rows = sum(rejected.values())
        metrics.ROWS_READ.labels(pipeline.name).inc(stats.rows + rejected_rows)
        metrics.ROWS_WRITTEN.labels(pipeline.name).inc(stats.rows)
        metrics.ROWS_REJECTED.labels(pipeline.name).inc(rejected_rows)
        metrics.CHUNK_DURATION.labels(pipeline.name).observe(time.monotonic() - began)
        if finish.completes_run:
            services.runs.commit_if_complete(run_id)
        return part_result(key, stats.rows, stats.bytes, stats.sha256)
    # Another delivery recorded the chunk first and wins (both wrote the same bytes), or
    # the run ended meanwhile and the part is named by no manifest: the chunk goes back to
    # pending (a retry of a failed run transforms it again), never left "running".
    recorded = ledger.get_chunk(run_id, index)
    if recorded.state is ChunkState.DONE:
        services.runs.commit_if_complete(run_id, again=redelivered)
        return chunk_result(recorded)
    ledger.release_chunk(run_id, index, "the run ended before this chunk's part was recorded")
    logger.info("run %s ended while chunk %d was transformed: part not recorded", run_id, index)
    return None


def commit_run(services: RunPorts, run_id: str) -> Run:
    """Check every chunk is done exactly once and its part is in S3 as recorded, then
    write the manifest and ``_SUCCESS`` and mark the run succeeded. Otherwise the run is
    failed with the reason (through the run lifecycle, as its success is counted); a run
    that already ended is returned as it is."""
    ledger = services.ledger
    ledger.move_run(run_id, RunState.COMMITTING)
    run = ledger.get_run(run_id)
    if run.state is not RunState.COMMITTING:
        return run
    pipeline = get_pipeline(run.pipeline)
    prefix = output_prefix(services, pipeline, run)
    chunks = ledger.get_chunks(run_id)
    problems = commit_problems(run.chunk_count, chunks)
    if not problems:
        bad_parts = _part_problems(services, chunks, prefix)
        problems = list(bad_parts.values())
        # Done, but its part is not as recorded: a retry must transform it again.
        for index, problem in bad_parts.items():
            ledger.invalidate_chunk(run_id, index, problem)
    cursor_window = run.window.cursor if run.window else None
    watermark = ledger.watermark(run.pipeline) if cursor_window else None
    if cursor_window is not None and watermark != cursor_window.low:
        # Committing would publish rows a later run has already published.
        problems.append(str(WatermarkMoved(run.pipeline, cursor_window.low, watermark)))
    if problems:
        return services.runs.end_run(
            run_id, RunState.FAILED, "commit refused: " + "; ".join(problems)
        )

    manifest = build_manifest(
        run,
        chunks,
        output_format=pipeline.output_format,
        schema=pipeline.schema_document(),
        created_at=utc_now(),
        mode=str(pipeline.source.mode),
        partition=partition_path(pipeline.grain, run.interval),
    )
    # The manifest goes first and _SUCCESS last: a reader that sees _SUCCESS can trust
    # the manifest, and one that sees neither knows the run is not complete.
    services.parts.put_json(manifest_key(prefix), manifest)
    services.parts.put_marker(success_key(prefix))
    try:
        succeeded = ledger.succeed_run(
            run,
            watermark=cursor_window,
            manifest_key=manifest_key(prefix),
            rows_written=manifest["total_rows"],
            rows_rejected=manifest["rejected_rows"],
        )
    except WatermarkMoved as moved:
        # Another run committed this window meanwhile: this one must not look committed.
        _withdraw(services, prefix)
        return services.runs.end_run(run_id, RunState.FAILED, f"commit refused: {moved}")
    if not succeeded and ledger.get_run(run_id).state is not RunState.SUCCEEDED:
        # Failed by another process while it committed (a twin delivery of the commit
        # giving up): S3 must agree with the ledger, so the markers go. (A twin delivery
        # that succeeded keeps them.)
        _withdraw(services, prefix)
    logger.info(
        "committed run %s: %d rows in %d parts", run_id, manifest["total_rows"], len(chunks)
    )
    final = ledger.get_run(run_id)
    if succeeded:
        services.runs.run_succeeded(final)
    return final


def _withdraw(services: RunPorts, prefix: str) -> None:
    """Take back a run's _SUCCESS, then its manifest: readers trust neither any more."""
    services.parts.delete_keys([success_key(prefix)])
    services.parts.delete_keys([manifest_key(prefix)])
    logger.warning("withdrew the manifest and _SUCCESS under %s", prefix)


def _part_problems(services: RunPorts, chunks: list[Chunk], prefix: str) -> dict[int, str]:
    """Parts that are missing from S3 or differ from what the ledger recorded, by chunk.

    One listing of the run's prefix answers for every part whose ETag the ledger holds
    (a part's ETag changes with its bytes); a part recorded before ETags were kept gets
    a HEAD, its sha256 checked against the ledger's.
    """
    listed = {stored.key: stored for stored in services.parts.list_objects(prefix + "/")}
    problems = {}
    for chunk in chunks:
        if chunk.s3_key is None:  # commit_problems already refused a chunk not done
            problems[chunk.index] = f"chunk {chunk.index} has no part"
            continue
        stored = listed.get(chunk.s3_key)
        if stored is None:
            problems[chunk.index] = f"part of chunk {chunk.index} is missing: {chunk.s3_key}"
        elif stored.size != chunk.bytes or (chunk.etag is not None and stored.etag != chunk.etag):
            problems[chunk.index] = (
                f"part of chunk {chunk.index} differs from the ledger: {chunk.s3_key}"
            )
        elif chunk.etag is None:
            found = services.parts.part_metadata(chunk.s3_key)
            if found is None or found.get("sha256") != chunk.sha256:
                problems[chunk.index] = (
                    f"part of chunk {chunk.index} differs from the ledger: {chunk.s3_key}"
                )
    return problems
