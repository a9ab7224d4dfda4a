"""``python -m bench [--rows N] [--scale-rows M] [--big-chunks K] [--profile]``: measure,
in one process tree and one run,

a. the naive script: one Python process, a server-side cursor, csv + gzip (level 5, as
   the pipeline's jsonl.gz), one PUT;
b. the honest limit of each format: the source's rows in that format with no Python per
   row and no transform, in two processes (one per core) each taking half the keys:
   PostgreSQL's row_to_json through COPY, gzip 5 by zlib-ng in 8 MiB blocks (b1,
   jsonl.gz); COPY's CSV read by Arrow in the columns' types and written as Parquet,
   zstd 3 (b2, parquet); one PUT a process (bench/baselines.py);
p. the best peer: a plain multiprocessing.Pool(2) script doing the pipeline's job (its
   chunks, its row transform, jsonl.gz, one PUT a chunk, a manifest);
c. the pipeline, trigger to committed manifest, with a real ``etl worker`` over RabbitMQ,
   a fresh one per format, for jsonl.gz and parquet: its first run on the fresh worker,
   then ``--repeats`` warm runs, the median of which is the table's row; with
   ``--scale-rows`` again on a table of that many rows, to see how time and memory grow;
d. the same records made by a SQL-only pipeline (``orders_sql``: the transform in its
   source query, no Python transform), COPY to Arrow to the part, likewise;
e. orders_daily without its columnar transform (``orders_rows``: the row path, a dict a
   row and the Python transform), likewise;
f. orders_daily in ``--big-chunks`` chunks (10,000 by default) on a fresh worker: how
   long planning, dispatch and the commit take;

Every job of a, b and p is run ``--repeats`` times too (3 by default), and the median
run is its row: this machine's speed swings by a fifth from one run to the next, and each
ratio is of two jobs. Then print one table, where each pipeline's orchestration goes
(before its first chunk, between chunks, after its last chunk, and the idle tail of the
process that finished first) and each target of issue 16 with its measured value, write
``bench/results/bench-<rows>.json`` and ``.png``, and exit 1 if a target was missed.
``--profile`` prints where one chunk's time goes instead. Each row count has a database
of its own (``etl_bench_<rows>``), seeded once and reused; the vhost is made anew.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import baselines
from bench.harness import Etl
from bench.profile import profile_chunk
from etl.adapters.s3 import LocalS3, make_s3_client
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import Services, build_services
from etl.config import Settings, load_settings
from etl.domain.chunks import count_chunks
from etl.domain.runs import Chunk, Run, RunState
from etl.domain.task_messages import TASK_PLAN_RUN
from etl.pipelines.orders import ORDERS_DAILY
from etl.service.lifecycle import RunService, wait_for_run
from etl.worker.app import celery_enqueue, make_celery

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COLUMNS = "id, customer_email, amount, currency, status, created_at, updated_at"
BENCH_VHOST = "etl-bench"
FORMAT_PIPELINES = {"jsonl.gz": "orders_daily", "parquet": "orders_parquet"}
SQL_PIPELINES = {"jsonl.gz": "orders_sql", "parquet": "orders_sql_parquet"}
ROW_PIPELINES = {"jsonl.gz": "orders_rows", "parquet": "orders_rows_parquet"}
# Each kind of pipeline run: its label and its pipeline per format.
RUN_KINDS = {
    "pipeline": ("c. pipeline", FORMAT_PIPELINES),
    "sql": ("d. SQL-only pipeline", SQL_PIPELINES),
    "rows": ("e. row-only pipeline", ROW_PIPELINES),
}
PIPELINE_KINDS = (*RUN_KINDS, "big")

# Issue 16's targets, each a ratio of rows/s within one run (or a time, or memory).
MIN_JSONL_X_NAIVE = 3.0
MIN_JSONL_X_LIMIT = 0.5
MIN_PARQUET_X_LIMIT = 0.6
MIN_JSONL_X_PEER = 1.5
MIN_ROWS_X_PEER = 1.0  # the row-only pipeline does more than the peer: ledger, chord, checks
MIN_ROWS_X_NAIVE = 1.5
MAX_OVERHEAD_MS_PER_CHUNK = 10.0
MAX_FIRST_OVER_WARM = 1.2
MAX_WORKER_RSS_MB = 300.0
MAX_TIME_GROWTH_PER_ROW_GROWTH = 1.1  # 10x the rows in at most 11x the time
MAX_BIG_PLAN_DISPATCH_S = 10.0
MAX_BIG_COMMIT_S = 10.0


@dataclass
class Measurement:
    """One line of the table."""

    name: str
    kind: str  # naive, limit, peer, one of RUN_KINDS, or big
    wall_s: float
    rows: int  # source rows: every rate is of these
    output_format: str | None = None
    records: int | None = None  # records written
    bytes_out: int | None = None  # as stored
    raw_bytes: int | None = None  # before compression, where known
    chunks: int | None = None
    overhead_ms_per_chunk: float | None = None
    first_wall_s: float | None = None  # a pipeline's first run on its fresh worker
    worker_peak_rss_mb: list[float] = field(default_factory=list)  # main, pool processes
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


@dataclass
class Target:
    """One of issue 16's targets and what this run measured."""

    what: str
    measured: float | None  # None: not measured (a reference is missing)
    limit: float
    at_least: bool

    @property
    def met(self) -> bool:
        if self.measured is None:
            return False
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


def bench_settings(rows: int) -> Settings:
    """The configured services, with a database for ``rows`` and a fresh vhost."""
    base = load_settings()
    database_name = f"etl_bench_{rows}"
    admin = create_engine(base.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database_name}
        ).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{database_name}"'))
    admin.dispose()
    database = make_url(base.database_url).set(database=database_name)
    broker = base.broker_url
    if shutil.which("rabbitmqctl"):
        # Anew each run: messages an interrupted run left would compete with this one.
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", BENCH_VHOST], capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", BENCH_VHOST], capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", BENCH_VHOST, "guest", ".*", ".*", ".*"],
            capture_output=True,
        )
        parts = urlsplit(base.broker_url)
        broker = f"{parts.scheme}://{parts.netloc}/{BENCH_VHOST}"
    return base.model_copy(
        update={
            "database_url": database.render_as_string(hide_password=False),
            "source_database_url": "",  # every job reads the benchmark's own table
            "broker_url": broker,
            "s3_bucket": "etl-bench",
            "pipeline_modules": "bench.pipelines",
        }
    )


def ensure_seeded(settings: Settings, rows: int) -> float:
    """Seed the orders table unless it already holds exactly ``rows`` rows; seconds spent."""
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            have = conn.execute(text("SELECT count(*) FROM orders")).scalar()
    except Exception:
        have = None
    began = time.monotonic()
    if have != rows:
        print(f"seeding {rows:,} orders (had {have})...", flush=True)
        seed_orders(engine, rows)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE orders"))
    engine.dispose()
    return time.monotonic() - began


def naive(settings: Settings, client: Any, rows: int) -> Measurement:
    """One process: server-side cursor, csv rows, gzip, one PUT."""
    import psycopg2

    where = baselines.where_of(settings.database_url, "", "", "")
    began = time.monotonic()
    connection = psycopg2.connect(**where.dsn)
    try:
        with tempfile.TemporaryFile() as spool:
            level = baselines.GZIP_LEVEL
            with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=level, mtime=0) as gz:
                text_out = io.TextIOWrapper(gz, encoding="utf-8", newline="")
                writer = csv.writer(text_out)
                with connection.cursor(name="naive") as cursor:
                    cursor.itersize = 10_000
                    cursor.execute(f"SELECT {COLUMNS} FROM orders ORDER BY id")
                    for row in cursor:
                        writer.writerow(row)
                text_out.flush()
                text_out.detach()
            size = spool.tell()
            spool.seek(0)
            client.upload_fileobj(spool, settings.s3_bucket, "bench/naive.csv.gz")
    finally:
        connection.close()
    return Measurement(
        "a. naive script (cursor, csv, gzip, PUT)",
        "naive",
        time.monotonic() - began,
        rows,
        output_format="csv.gz",
        records=rows,
        bytes_out=size,
    )


def limit_run(settings: Settings, rows: int, output_format: str) -> Measurement:
    """b1 or b2: the honest limit of a format (bench/baselines.py)."""
    where = baselines.where_of(
        settings.database_url, settings.s3_endpoint_url, settings.s3_region, settings.s3_bucket
    )
    done = baselines.limit(output_format, where, baselines.halves(settings.database_url))
    label = {"jsonl.gz": "b1. limit: row_to_json, COPY", "parquet": "b2. limit: COPY, Arrow"}
    return Measurement(
        f"{label[output_format]}, {output_format} (2 processes)",
        "limit",
        done.wall_s,
        rows,
        output_format=output_format,
        records=done.records,
        bytes_out=done.bytes_out,
        raw_bytes=done.raw_bytes,
        chunks=done.parts,
    )


def peer_run(settings: Settings, rows: int, chunk_size: int) -> Measurement:
    """p: the pool-of-2 script (bench/baselines.py)."""
    where = baselines.where_of(
        settings.database_url, settings.s3_endpoint_url, settings.s3_region, settings.s3_bucket
    )
    done = baselines.peer(where, settings.database_url, chunk_size)
    return Measurement(
        "p. peer: multiprocessing.Pool(2) script, jsonl.gz",
        "peer",
        done.wall_s,
        rows,
        output_format="jsonl.gz",
        records=done.records,
        bytes_out=done.bytes_out,
        raw_bytes=done.raw_bytes,
        chunks=done.parts,
    )


def peak_rss_mb(pid: int) -> list[float]:
    """VmHWM of a process and its children, in MB (Linux)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    peaks = []
    for one in pids:
        status = Path(f"/proc/{one}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(round(int(line.split()[1]) / 1024, 1))
    return peaks


@contextmanager
def fresh_worker(settings: Settings, concurrency: int) -> Iterator[tuple[Etl, RunService, Any]]:
    """A new ``etl worker --concurrency N``, ready, and a RunService that triggers runs
    on it (its AMQP connection made up front: the trigger's own handshake is not the
    pipeline's overhead); the worker stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as logs:
        worker = Etl(
            ["worker", "--concurrency", str(concurrency)], settings, Path(logs) / "worker.log"
        )
        services = build_services(settings)
        try:
            worker.wait_for_log(r"ready\.")
            app = make_celery(settings)
            with app.producer_or_acquire() as producer:
                producer.connection.ensure_connection()
            yield worker, RunService(services.ledger, celery_enqueue(app)), services
        finally:
            worker.stop()
            services.close()


def run_once(
    service: RunService, services: Services, worker: Etl, pipeline: str, chunk_size: int
) -> tuple[Run, list[Chunk]]:
    """One run, trigger to commit; the finished run and its chunks."""
    run, _ = service.start_run(
        pipeline,
        interval=date(2000, 1, 1),
        params={"chunk_size": chunk_size},
        idempotency_key=f"bench-{time.time()}-{pipeline}",
    )
    final = wait_for_run(services.ledger, run.id, timeout_s=3600, poll_s=0.05)
    if final.state is not RunState.SUCCEEDED:
        problems = "\n".join(worker.problems()[-20:])
        raise RuntimeError(f"the {pipeline} run {final.state}: {final.reason}\n{problems}")
    assert final.finished_at is not None
    return final, services.ledger.get_chunks(run.id)


def run_wall(run: Run) -> float:
    """Trigger (the run recorded) to commit (the run succeeded), by the ledger."""
    assert run.finished_at is not None
    return (run.finished_at - run.created_at).total_seconds()


def median_run(
    runs: list[Measurement], key: Callable[[Measurement], float] = lambda m: m.wall_s
) -> Measurement:
    """The run at the median of ``key`` (its wall time unless said): the lower middle of
    an even number."""
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


def walls_s(runs: list[Measurement]) -> list[float]:
    """Every run's wall time, in the order run: what the median was taken of."""
    return [round(m.wall_s, 3) for m in runs]


def repeated(job: Callable[[], Measurement], repeats: int) -> Measurement:
    """``job`` run ``repeats`` times, one after the other: the median run, with every
    run's wall time in its details."""
    runs = [job() for _ in range(repeats)]
    median = median_run(runs)
    median.details["walls_s"] = walls_s(runs)
    return median


def orchestration_parts(run: Run, chunks: list[Chunk]) -> dict[str, float]:
    """Where a run's time around its chunks went, in ms, from the ledger's stamps: from
    the trigger to the first chunk's start; between one chunk and the next of the same
    worker process (their average over the processes); from the last chunk's finish to
    the commit; and the tail, how long the process that finished its last chunk first
    then sat idle while another still worked."""
    spans = [(c.worker or "?", c.started_at, c.finished_at) for c in chunks]
    timed = [(who, start, end) for who, start, end in spans if start and end]
    if not timed or run.finished_at is None:
        return {}
    by_process: dict[str, list[tuple[datetime, datetime]]] = {}
    for who, start, end in timed:
        by_process.setdefault(who, []).append((start, end))
    gaps, last_finishes = [], []
    for own in by_process.values():
        first, last = min(start for start, _ in own), max(end for _, end in own)
        work = sum((end - start).total_seconds() for start, end in own)
        gaps.append((last - first).total_seconds() - work)
        last_finishes.append(last)
    started = min(start for _, start, _ in timed)
    return {
        "before_first_chunk_ms": (started - run.created_at).total_seconds() * 1000,
        "between_chunks_ms": sum(gaps) / len(gaps) * 1000,
        "after_last_chunk_ms": (run.finished_at - max(last_finishes)).total_seconds() * 1000,
        "idle_tail_ms": (max(last_finishes) - min(last_finishes)).total_seconds() * 1000,
    }


def overhead_ms_per_chunk(run: Run, chunks: list[Chunk], concurrency: int) -> float | None:
    """What the chunks' own work, shared by the worker processes, does not explain, per
    chunk: planning, dispatch, queueing, the commit."""
    work = sum(
        (c.finished_at - c.started_at).total_seconds()
        for c in chunks
        if c.finished_at and c.started_at
    )
    return (run_wall(run) - work / concurrency) / len(chunks) * 1000 if chunks else None


def pipeline_run(
    settings: Settings,
    rows: int,
    chunk_size: int,
    concurrency: int,
    output_format: str,
    kind: str = "pipeline",
    repeats: int = 1,
) -> Measurement:
    """Runs of a pipeline (or its SQL-only or row-only twin), trigger to commit, on a
    fresh worker: the first (what the pool processes load and connect on their first
    chunk is in it), then ``repeats`` warm ones. The measurement is the median warm run;
    its orchestration the median of theirs (with the parts of that run)."""
    label, pipelines = RUN_KINDS[kind]
    pipeline = pipelines[output_format]
    with fresh_worker(settings, concurrency) as (worker, service, services):
        first, first_chunks = run_once(service, services, worker, pipeline, chunk_size)
        warm_runs = [
            run_once(service, services, worker, pipeline, chunk_size) for _ in range(repeats)
        ]
        rss = peak_rss_mb(worker.process.pid)
    measured = []
    for warm, chunks in warm_runs:
        overhead = overhead_ms_per_chunk(warm, chunks, concurrency)
        measured.append(
            Measurement(
                f"{label}, {output_format}",
                kind,
                run_wall(warm),
                rows,
                output_format=output_format,
                records=warm.rows_written,
                bytes_out=sum(c.bytes or 0 for c in chunks),
                chunks=len(chunks),
                overhead_ms_per_chunk=overhead,
                first_wall_s=run_wall(first),
                worker_peak_rss_mb=rss,
                details={"parts_ms": orchestration_parts(warm, chunks)},
            )
        )
    middle_overhead = median_run(measured, key=lambda m: m.overhead_ms_per_chunk or 0.0)
    median = median_run(measured)
    median.details = {
        "pipeline": pipeline,
        "walls_s": walls_s(measured),
        "overheads_ms_per_chunk": [m.overhead_ms_per_chunk for m in measured],
        "parts_ms": middle_overhead.details["parts_ms"],
        "first_overhead_ms_per_chunk": overhead_ms_per_chunk(first, first_chunks, concurrency),
    }
    median.overhead_ms_per_chunk = middle_overhead.overhead_ms_per_chunk
    return median


def _logged_at(log: str, pattern: str, after: datetime | None = None) -> datetime | None:
    """When the worker logged the first line matching ``pattern`` (at or after
    ``after``): the text format's ``2026-01-01 00:00:00,123`` (local time) or the JSON
    format's ``ts``."""
    for line in log.splitlines():
        if not re.search(pattern, line):
            continue
        if found := re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line):
            moment = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
        elif found := re.search(r'"ts": "([^"]+)"', line):
            moment = datetime.fromisoformat(found[1])
        else:
            continue
        if after is None or moment >= after:
            return moment
    return None


def big_run(
    settings: Settings, rows: int, chunk_count: int, concurrency: int, log_copy: Path
) -> Measurement:
    """f: orders_daily in ``chunk_count`` chunks (``rows // chunk_count`` rows each) on a
    fresh worker, with its stages:

    - plan: the run recorded -> its chunks recorded and the run running (the worker's
      "planned run" line, logged right after the ledger's move to running);
    - dispatch: that line -> the last chunk message published (Celery's "Task
      etl.plan_run[...] succeeded" line: the task publishes every chunk message, the
      broker confirming them, before it returns; should publishing ever move out of
      the task, this observable must move with it);
    - commit: the last chunk's finished_at -> the run's finished_at, in the ledger.

    The worker's log is kept in ``log_copy``.
    """
    chunk_size = max(1, rows // chunk_count)
    planned = count_chunks(rows, chunk_size)
    settings = settings.model_copy(
        update={"max_chunks_per_run": max(settings.max_chunks_per_run, planned)}
    )
    with fresh_worker(settings, concurrency) as (worker, service, services):
        run, chunks = run_once(service, services, worker, ORDERS_DAILY.name, chunk_size)
        rss = peak_rss_mb(worker.process.pid)
        log = worker.log()
    log_copy.write_text(log)
    assert run.finished_at is not None
    planned_at = _logged_at(log, rf"planned run {run.id}")
    dispatched_at = (
        _logged_at(log, rf"Task {re.escape(TASK_PLAN_RUN)}\[.*\] succeeded", planned_at)
        if planned_at
        else None
    )
    last_chunk = max((c.finished_at for c in chunks if c.finished_at), default=None)
    plan_s = (planned_at - run.created_at).total_seconds() if planned_at else None
    dispatch_s = (
        (dispatched_at - planned_at).total_seconds() if planned_at and dispatched_at else None
    )
    commit_s = (run.finished_at - last_chunk).total_seconds() if last_chunk else None
    return Measurement(
        f"f. pipeline, {len(chunks):,} chunks of {chunk_size:,}, jsonl.gz",
        "big",
        run_wall(run),
        rows,
        output_format=ORDERS_DAILY.output_format,
        records=run.rows_written,
        bytes_out=sum(c.bytes or 0 for c in chunks),
        chunks=len(chunks),
        overhead_ms_per_chunk=overhead_ms_per_chunk(run, chunks, concurrency),
        worker_peak_rss_mb=rss,
        details={
            "chunk_size": chunk_size,
            "plan_s": plan_s,
            "dispatch_s": dispatch_s,
            "plan_dispatch_s": (
                plan_s + dispatch_s if plan_s is not None and dispatch_s is not None else None
            ),
            "commit_s": commit_s,
            "created_at": run.created_at.isoformat(),
            "planned_at": planned_at.isoformat() if planned_at else None,
            "dispatched_at": dispatched_at.isoformat() if dispatched_at else None,
            "last_chunk_finished_at": last_chunk.isoformat() if last_chunk else None,
            "finished_at": run.finished_at.isoformat(),
        },
    )


def _one(results: list[Measurement], kind: str, fmt: str | None = None) -> Measurement | None:
    return next(
        (m for m in results if m.kind == kind and (fmt is None or m.output_format == fmt)), None
    )


def _ratio(run: Measurement | None, reference: Measurement | None) -> float | None:
    if run is None or reference is None or not reference.rows_per_s:
        return None
    return run.rows_per_s / reference.rows_per_s


def targets(results: list[Measurement], scaled: list[Measurement], scale_rows: int) -> list[Target]:
    """Issue 16's targets for this one benchmark run (those whose runs were made)."""
    naive_run, peer = _one(results, "naive"), _one(results, "peer")
    found: list[Target] = []
    if columnar := _one(results, "pipeline", "jsonl.gz"):
        found += [
            Target("c jsonl.gz: x naive", _ratio(columnar, naive_run), MIN_JSONL_X_NAIVE, True),
            Target(
                "c jsonl.gz: x its limit (b1)",
                _ratio(columnar, _one(results, "limit", "jsonl.gz")),
                MIN_JSONL_X_LIMIT,
                True,
            ),
            Target("c jsonl.gz: x peer", _ratio(columnar, peer), MIN_JSONL_X_PEER, True),
        ]
    if columnar := _one(results, "pipeline", "parquet"):
        found.append(
            Target(
                "c parquet: x its limit (b2)",
                _ratio(columnar, _one(results, "limit", "parquet")),
                MIN_PARQUET_X_LIMIT,
                True,
            )
        )
    if row_only := _one(results, "rows", "jsonl.gz"):
        found += [
            Target("e jsonl.gz: x peer", _ratio(row_only, peer), MIN_ROWS_X_PEER, True),
            Target("e jsonl.gz: x naive", _ratio(row_only, naive_run), MIN_ROWS_X_NAIVE, True),
        ]
    for run in (m for m in results if m.kind == "pipeline"):
        found.append(
            Target(
                f"c {run.output_format}: orchestration ms per chunk",
                run.overhead_ms_per_chunk,
                MAX_OVERHEAD_MS_PER_CHUNK,
                False,
            )
        )
    for run in (m for m in results if m.kind in RUN_KINDS and m.first_wall_s):
        code = run.name[0]
        found.append(
            Target(
                f"{code} {run.output_format}: first run x warm run",
                (run.first_wall_s or 0.0) / run.wall_s,
                MAX_FIRST_OVER_WARM,
                False,
            )
        )
    for run in (m for m in results if m.kind in PIPELINE_KINDS):
        found.append(
            Target(
                f"{run.name[0]} {run.output_format}: worker peak RSS MB",
                max(run.worker_peak_rss_mb or [0.0]),
                MAX_WORKER_RSS_MB,
                False,
            )
        )
    for big in scaled:
        small = _one(results, big.kind, big.output_format)
        if small is None:
            continue
        growth = scale_rows / small.rows
        found += [
            Target(
                f"{big.name[0]} {big.output_format}: time x{growth:g} rows",
                big.wall_s / small.wall_s,
                growth * MAX_TIME_GROWTH_PER_ROW_GROWTH,
                False,
            ),
            Target(
                f"{big.name[0]} {big.output_format}: worker peak RSS MB at {scale_rows:,} rows",
                max(big.worker_peak_rss_mb or [0.0]),
                MAX_WORKER_RSS_MB,
                False,
            ),
        ]
    if big_one := _one(results, "big"):
        found += [
            Target(
                f"f {big_one.chunks:,} chunks: plan + dispatch s",
                big_one.details.get("plan_dispatch_s"),
                MAX_BIG_PLAN_DISPATCH_S,
                False,
            ),
            Target(
                f"f {big_one.chunks:,} chunks: commit s",
                big_one.details.get("commit_s"),
                MAX_BIG_COMMIT_S,
                False,
            ),
        ]
    return found


def _cell(value: float | None, spec: str, width: int) -> str:
    return f"{value:{width}{spec}}" if value is not None else " " * width


def table(results: list[Measurement], checked: list[Target]) -> str:
    """The printed table: each job's rate, its ratio to the naive script, to its format's
    limit and (jsonl.gz) to the peer; then the 10,000-chunk run's stages and the targets."""
    naive_run, peer = _one(results, "naive"), _one(results, "peer")
    lines = [
        f"{'':52} {'wall s':>7} {'rows/s':>9} {'x naive':>7} {'x limit':>7} {'x peer':>6} "
        f"{'chunks':>6} {'ms/chunk':>8} {'first s':>7}  peak RSS MB (main, pool)"
    ]
    for m in results:
        own_limit = _one(results, "limit", m.output_format)
        to_peer = _ratio(m, peer) if m.output_format == "jsonl.gz" else None
        lines.append(
            f"{m.name:52} {m.wall_s:7.2f} {m.rows_per_s:9,.0f} "
            f"{_cell(_ratio(m, naive_run), '.2f', 7)} {_cell(_ratio(m, own_limit), '.2f', 7)} "
            f"{_cell(to_peer, '.2f', 6)} {m.chunks or '':>6} "
            f"{_cell(m.overhead_ms_per_chunk, '.1f', 8)} {_cell(m.first_wall_s, '.2f', 7)}  "
            f"{', '.join(str(x) for x in m.worker_peak_rss_mb)}"
        )
    lines.append("")
    for m in results:
        if m.raw_bytes or m.bytes_out:
            raw = f"{m.raw_bytes / 1e6:7.1f} MB uncompressed, " if m.raw_bytes else ""
            lines.append(
                f"bytes   {m.name.split(' (')[0]:52} {m.records or 0:>9,} records, {raw}"
                f"{(m.bytes_out or 0) / 1e6:.1f} MB stored"
            )
    for m in results:
        if parts := m.details.get("parts_ms"):
            lines.append(
                f"orchestration  {m.name.split(' (')[0]:44} "
                f"before the first chunk {parts['before_first_chunk_ms']:5.0f} ms, "
                f"between chunks {parts['between_chunks_ms']:4.0f} ms a process, "
                f"after the last {parts['after_last_chunk_ms']:4.0f} ms, "
                f"idle tail {parts['idle_tail_ms']:4.0f} ms"
            )
    if big_one := _one(results, "big"):
        stages = big_one.details
        lines += [
            "",
            f"f. {big_one.chunks:,} chunks: "
            + ", ".join(
                f"{what} {_cell(stages.get(key), '.2f', 0).strip() or '?'} s"
                for what, key in (
                    ("plan", "plan_s"),
                    ("dispatch", "dispatch_s"),
                    ("commit", "commit_s"),
                )
            )
            + f", run {big_one.wall_s:.1f} s",
        ]
    lines.append("")
    for target in checked:
        relation = ">=" if target.at_least else "<="
        verdict = "met" if target.met else "MISSED"
        lines.append(
            f"target  {target.what:50} {_cell(target.measured, '.2f', 9)} {relation} "
            f"{target.limit:<8g} {verdict}"
        )
    return "\n".join(lines)


def chart(results: list[Measurement], path: Path) -> bool:
    """A bar chart of rows/s; False if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(9, 0.4 * len(results) + 1.5))
    names = [f"{m.name.split(' (')[0]} @ {m.rows:,}" for m in results]
    axis.barh(names, [m.rows_per_s for m in results], color="#3b7dd8")
    axis.invert_yaxis()
    axis.set_xlabel("rows per second")
    axis.set_title(f"{results[0].rows:,} orders rows, 2 cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def progress(done: Measurement) -> Measurement:
    """Say a job is done, as it is (the table comes at the end)."""
    first = f", first run {done.first_wall_s:.2f} s" if done.first_wall_s else ""
    walls = done.details.get("walls_s") or []
    each = f" (median of {', '.join(f'{wall:.2f}' for wall in walls)})" if len(walls) > 1 else ""
    print(f"{done.name}: {done.wall_s:.2f} s{each}{first}", flush=True)
    return done


def main() -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--chunk-size", type=int, default=ORDERS_DAILY.chunk_size, help="keys per chunk"
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--formats", default="jsonl.gz,parquet", help="formats of c")
    parser.add_argument(
        "--sql-formats", default="jsonl.gz,parquet", help="formats of d; empty for none"
    )
    parser.add_argument("--row-formats", default="jsonl.gz", help="formats of e; empty for none")
    parser.add_argument(
        "--big-chunks",
        type=int,
        default=10_000,
        help="f: a run of orders_daily in this many chunks (0: none)",
    )
    parser.add_argument(
        "--scale-rows", type=int, default=0, help="also run the pipelines on this many rows"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each job (warm runs of a pipeline)"
    )
    parser.add_argument("--profile", action="store_true", help="profile one chunk and stop")
    args = parser.parse_args()
    formats = [fmt for fmt in args.formats.split(",") if fmt]
    sql_formats = [fmt for fmt in args.sql_formats.split(",") if fmt]
    row_formats = [fmt for fmt in args.row_formats.split(",") if fmt]
    unknown = (set(formats) | set(sql_formats) | set(row_formats)) - set(FORMAT_PIPELINES)
    if unknown:
        parser.error(f"unknown format(s) {', '.join(sorted(unknown))}")

    settings = bench_settings(args.rows)
    if args.profile:
        ensure_seeded(settings, args.rows)
        profile_chunk(settings, args.chunk_size)
        return 0
    local_s3 = None
    if not settings.s3_endpoint_url:
        local_s3 = LocalS3()
        local_s3.__enter__()
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    endpoint = settings.s3_endpoint_url or (local_s3.endpoint_url if local_s3 else "")
    settings = settings.model_copy(update={"s3_endpoint_url": endpoint})
    scaled: list[Measurement] = []
    load_before = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        client = make_s3_client(settings.s3_endpoint_url, settings.s3_region)
        build_services(settings).parts.ensure_bucket()
        seeded_s = ensure_seeded(settings, args.rows)
        print(f"load average before: {load_before}", flush=True)
        repeats = max(1, args.repeats)
        results = [progress(repeated(partial(naive, settings, client, args.rows), repeats))]
        for fmt in ("jsonl.gz", "parquet"):
            limit = partial(limit_run, settings, args.rows, fmt)
            results.append(progress(repeated(limit, repeats)))
        results.append(
            progress(repeated(partial(peer_run, settings, args.rows, args.chunk_size), repeats))
        )
        runs = (
            [(fmt, "pipeline") for fmt in formats]
            + [(fmt, "sql") for fmt in sql_formats]
            + [(fmt, "rows") for fmt in row_formats]
        )
        for fmt, kind in runs:
            results.append(
                progress(
                    pipeline_run(
                        settings, args.rows, args.chunk_size, args.concurrency, fmt, kind, repeats
                    )
                )
            )
        if args.big_chunks:
            results.append(
                progress(
                    big_run(
                        settings,
                        args.rows,
                        args.big_chunks,
                        args.concurrency,
                        RESULTS / f"bench-{args.rows}-f-worker.log",
                    )
                )
            )
        if args.scale_rows:
            big = bench_settings(args.scale_rows).model_copy(update={"s3_endpoint_url": endpoint})
            ensure_seeded(big, args.scale_rows)
            for fmt, kind in runs:
                scaled.append(
                    progress(
                        pipeline_run(
                            big,
                            args.scale_rows,
                            args.chunk_size,
                            args.concurrency,
                            fmt,
                            kind,
                            repeats,
                        )
                    )
                )
    finally:
        if local_s3 is not None:
            local_s3.__exit__(None, None, None)
    load_after = os.getloadavg()
    checked = targets(results, scaled, args.scale_rows)
    print()
    print(table(results + scaled, checked))
    print(f"load average before {load_before}, after {load_after}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench-{args.rows}"
    document = {
        "rows": args.rows,
        "scale_rows": args.scale_rows or None,
        "chunk_size": args.chunk_size,
        "big_chunks": args.big_chunks or None,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "seed_s": round(seeded_s, 2),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": [asdict(m) | {"rows_per_s": m.rows_per_s} for m in results + scaled],
        "targets": [asdict(t) | {"met": t.met} for t in checked],
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    drawn = chart(results + scaled, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + (f" and {stem}.png" if drawn else " (no matplotlib: no chart)"))
    return 0 if all(target.met for target in checked) else 1


if __name__ == "__main__":
    raise SystemExit(main())
