"""``python -m bench [--rows N] [--scale-rows M] [--profile]``: measure, in one process
tree and one run,

a. the naive script: one Python process, a server-side cursor, csv + gzip (level 6, as
   the pipeline's jsonl.gz), one PUT;
b. the limit: ``COPY (SELECT ...) TO STDOUT`` into gzip level 1 (zlib, in C), one PUT,
   no Python rows;
c. the pipeline, trigger to committed manifest, with a real ``etl worker`` over RabbitMQ
   (a fresh one per format), for jsonl.gz and parquet; with ``--scale-rows`` again on a
   table of that many rows, to see how time and memory grow;
d. the same records made by a SQL-only pipeline (``orders_sql``: the transform in its
   source query, no Python transform), COPY to Arrow to the part, likewise;
e. with ``--row-formats``, orders_daily without its columnar transform (the row path:
   a cursor, a dict per row, the Python transform), likewise;

then print one table and each target of issue 7 with its measured value, write
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
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from etl.adapters.db import SqlSource, make_engine
from etl.adapters.s3 import LocalS3, make_s3_client
from etl.adapters.sample_orders import seed_orders
from etl.bootstrap import build_services
from etl.config import Settings, load_settings, settings_env
from etl.domain.runs import RunState
from etl.formats.columnar import sql_table, transform_table
from etl.formats.encoding import make_writer
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
# Each kind of pipeline run: its label and its pipeline per format. Issue 7's targets are
# checked on c only; d and e are there to compare with.
RUN_KINDS = {
    "pipeline": ("c. pipeline", FORMAT_PIPELINES),
    "sql": ("d. SQL-only pipeline", SQL_PIPELINES),
    "rows": ("e. row-transform pipeline", ROW_PIPELINES),
}

# Issue 7's targets, each a ratio within one run.
MIN_RATIO_TO_NAIVE = 2.5
MIN_RATIO_TO_LIMIT = 0.40
MAX_OVERHEAD_MS_PER_CHUNK = 10.0
MAX_WORKER_RSS_MB = 300.0
MAX_TIME_GROWTH_PER_ROW_GROWTH = 1.1  # 10x the rows in at most 11x the time


@dataclass
class Measurement:
    """One line of the table."""

    name: str
    wall_s: float
    rows: int
    output_format: str | None = None
    kind: str = "pipeline"
    chunks: int | None = None
    overhead_ms_per_chunk: float | None = None
    worker_peak_rss_mb: list[float] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


@dataclass
class Target:
    """One of issue 7's targets and what this run measured."""

    what: str
    measured: float
    limit: float
    at_least: bool

    @property
    def met(self) -> bool:
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
            "source_database_url": "",  # a, b and c all read the benchmark's own table
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


def _connect(settings: Settings) -> Any:
    import psycopg2

    url = make_url(settings.database_url)
    return psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        dbname=url.database,
    )  # fmt: skip


def naive(settings: Settings, client: Any, rows: int) -> Measurement:
    """One process: server-side cursor, csv rows, gzip, one PUT."""
    began = time.monotonic()
    connection = _connect(settings)
    try:
        with tempfile.TemporaryFile() as spool:
            with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=6, mtime=0) as gz:
                text_out = io.TextIOWrapper(gz, encoding="utf-8", newline="")
                writer = csv.writer(text_out)
                with connection.cursor(name="naive") as cursor:
                    cursor.itersize = 10_000
                    cursor.execute(f"SELECT {COLUMNS} FROM orders ORDER BY id")
                    for row in cursor:
                        writer.writerow(row)
                text_out.flush()
                text_out.detach()
            spool.seek(0)
            client.upload_fileobj(spool, settings.s3_bucket, "bench/naive.csv.gz")
    finally:
        connection.close()
    return Measurement("a. naive script (cursor, csv, gzip, PUT)", time.monotonic() - began, rows)


def copy_limit(settings: Settings, client: Any, rows: int) -> Measurement:
    """COPY to STDOUT straight into gzip level 1, one PUT: no Python rows."""
    began = time.monotonic()
    connection = _connect(settings)
    try:
        with tempfile.TemporaryFile() as spool, connection.cursor() as cursor:
            with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=1, mtime=0) as gz:
                cursor.copy_expert(
                    f"COPY (SELECT {COLUMNS} FROM orders ORDER BY id) TO STDOUT WITH (FORMAT csv)",
                    gz,
                )
            spool.seek(0)
            client.upload_fileobj(spool, settings.s3_bucket, "bench/copy.csv.gz")
    finally:
        connection.close()
    return Measurement("b. limit (COPY, gzip -1, PUT)", time.monotonic() - began, rows)


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


def pipeline_run(
    settings: Settings,
    rows: int,
    chunk_size: int,
    concurrency: int,
    output_format: str,
    kind: str = "pipeline",
) -> Measurement:
    """One run of the pipeline (or its SQL-only or row-path twin), trigger to commit, on
    a worker of its own."""
    label, pipelines = RUN_KINDS[kind]
    pipeline = pipelines[output_format]
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    with tempfile.NamedTemporaryFile(prefix="etl-bench-worker-", suffix=".log") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "etl", "worker", "--concurrency", str(concurrency)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        services = build_services(settings)
        try:
            deadline = time.monotonic() + 60
            while b"ready." not in Path(log.name).read_bytes():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the worker did not start:\n" + Path(log.name).read_text())
                time.sleep(0.2)
            app = make_celery(settings)
            with app.producer_or_acquire() as producer:
                # The trigger's own AMQP handshake is not the pipeline's overhead.
                producer.connection.ensure_connection()
            service = RunService(services.ledger, celery_enqueue(app))
            # A warm-up run first: a worker is long-lived, and what its pool processes
            # load and connect on their first chunk is a cost of its start, not a run's.
            for attempt in ("warm-up", "measured"):
                run, _ = service.start_run(
                    pipeline,
                    interval=date(2000, 1, 1),
                    params={"chunk_size": chunk_size},
                    idempotency_key=f"bench-{time.time()}-{pipeline}-{attempt}",
                )
                final = wait_for_run(services.ledger, run.id, timeout_s=3600, poll_s=0.05)
                if final.state is not RunState.SUCCEEDED:
                    raise RuntimeError(
                        f"the {attempt} {output_format} run {final.state}: {final.reason}"
                    )
            assert final.finished_at is not None
            wall = (final.finished_at - final.created_at).total_seconds()
            chunks = services.ledger.get_chunks(run.id)
            work = sum(
                (c.finished_at - c.started_at).total_seconds()
                for c in chunks
                if c.finished_at and c.started_at
            )
            # What the chunks' own work, shared by the worker processes, does not explain.
            overhead = (wall - work / concurrency) / len(chunks) * 1000 if chunks else None
            return Measurement(
                f"{label}, {output_format} ({concurrency} worker processes)",
                wall,
                rows,
                output_format=output_format,
                kind=kind,
                chunks=len(chunks),
                overhead_ms_per_chunk=overhead,
                worker_peak_rss_mb=peak_rss_mb(worker.pid),
            )
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, 15)
                worker.wait(timeout=60)
            services.close()


def targets(results: list[Measurement], scaled: list[Measurement], scale_rows: int) -> list[Target]:
    """Issue 7's targets for each pipeline run of this one benchmark run."""
    naive_rate, limit_rate = results[0].rows_per_s, results[1].rows_per_s
    found = []
    for run in (m for m in results[2:] if m.kind == "pipeline"):
        fmt = run.output_format
        found += [
            Target(f"{fmt}: rows/s x naive", run.rows_per_s / naive_rate, MIN_RATIO_TO_NAIVE, True),
            Target(f"{fmt}: rows/s x limit", run.rows_per_s / limit_rate, MIN_RATIO_TO_LIMIT, True),
            Target(
                f"{fmt}: overhead ms per chunk",
                run.overhead_ms_per_chunk or 0.0,
                MAX_OVERHEAD_MS_PER_CHUNK,
                False,
            ),
            Target(
                f"{fmt}: worker peak RSS MB",
                max(run.worker_peak_rss_mb or [0.0]),
                MAX_WORKER_RSS_MB,
                False,
            ),
        ]
        for big in (
            m for m in scaled if m.output_format == run.output_format and m.kind == run.kind
        ):
            growth = scale_rows / run.rows
            found += [
                Target(
                    f"{fmt}: time x{growth:g} rows",
                    big.wall_s / run.wall_s,
                    growth * MAX_TIME_GROWTH_PER_ROW_GROWTH,
                    False,
                ),
                Target(
                    f"{fmt}: worker peak RSS MB at {scale_rows:,} rows",
                    max(big.worker_peak_rss_mb or [0.0]),
                    MAX_WORKER_RSS_MB,
                    False,
                ),
            ]
    return found


def table(results: list[Measurement], checked: list[Target]) -> str:
    """The printed table: ratios to the naive script (a) and to the limit (b), then the
    targets."""
    naive_rate, limit_rate = results[0].rows_per_s, results[1].rows_per_s
    lines = [
        f"{'':58} {'rows':>11} {'wall s':>8} {'rows/s':>10} {'x a':>6} {'x b':>6} "
        f"{'chunks':>6} {'ms/chunk':>8}  peak RSS MB (main, pool)"
    ]
    for m in results:
        overhead = f"{m.overhead_ms_per_chunk:.1f}" if m.overhead_ms_per_chunk is not None else ""
        lines.append(
            f"{m.name:58} {m.rows:11,} {m.wall_s:8.2f} {m.rows_per_s:10,.0f} "
            f"{m.rows_per_s / naive_rate:6.2f} {m.rows_per_s / limit_rate:6.2f} "
            f"{m.chunks or '':>6} {overhead:>8}  "
            f"{', '.join(str(x) for x in m.worker_peak_rss_mb)}"
        )
    lines.append("")
    for target in checked:
        relation = ">=" if target.at_least else "<="
        verdict = "met" if target.met else "MISSED"
        lines.append(
            f"target  {target.what:50} {target.measured:9.2f} {relation} {target.limit:<8g} "
            f"{verdict}"
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
    figure, axis = plt.subplots(figsize=(9, 3.5))
    names = [f"{m.name.split(' (')[0]} @ {m.rows:,}" for m in results]
    axis.barh(names, [m.rows_per_s for m in results], color="#3b7dd8")
    axis.invert_yaxis()
    axis.set_xlabel("rows per second")
    axis.set_title(f"{results[0].rows:,} orders rows, 2 cores")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _print_profile(title: str, rows: int, spent: dict[str, float]) -> None:
    total = sum(spent.values())
    print(f"{title}, one chunk of {rows:,} rows: {total:.3f} s")
    for stage, seconds in spent.items():
        print(
            f"  {stage:40} {seconds:7.3f} s  {seconds / total:5.1%}  "
            f"{seconds / rows * 1e6:6.2f} us/row"
        )


def profile_chunk(settings: Settings, chunk_size: int) -> None:
    """Where one chunk's time goes, stage by stage: on the fast path (columnar transform)
    and the SQL-only path for each format, and on the row path for jsonl.gz."""
    from bench.pipelines import ORDERS_SQL

    engine = make_engine(settings.database_url)
    source = SqlSource(engine, ORDERS_DAILY.source)
    sql_source = SqlSource(engine, ORDERS_SQL.source)
    schema = ORDERS_DAILY.record_schema
    columnar = ORDERS_DAILY.columnar_transform
    assert columnar is not None
    # The first pass warms the process (imports, the connection pool) and is not shown.
    for attempt, output_format in enumerate(["jsonl.gz", *FORMAT_PIPELINES]):
        spent = dict.fromkeys(
            ["COPY to a file, CSV into Arrow", "columnar transform",
             "row transform (the rest), schema check", "encode and compress"],
            0.0,
        )  # fmt: skip

        def timed_columnar(batch: Any, spent: Any = spent) -> Any:
            began = time.perf_counter()
            try:
                return columnar(batch)
            finally:
                spent["columnar transform"] += time.perf_counter() - began

        rows = 0
        with tempfile.TemporaryFile() as spool:
            writer = make_writer(output_format, spool, schema)
            batches = source.read_range_text(1, 1 + chunk_size)
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                spent["COPY to a file, CSV into Arrow"] += time.perf_counter() - began
                if batch is None:
                    break
                began = time.perf_counter()
                before = spent["columnar transform"]
                records, _ = transform_table(
                    batch, timed_columnar, ORDERS_DAILY.row_transform, schema
                )
                spent["row transform (the rest), schema check"] += (
                    time.perf_counter() - began - (spent["columnar transform"] - before)
                )
                began = time.perf_counter()
                writer.write_table(records)
                spent["encode and compress"] += time.perf_counter() - began
                rows += batch.num_rows
            began = time.perf_counter()
            writer.close()
            spent["encode and compress"] += time.perf_counter() - began

        sql_spent = dict.fromkeys(
            ["COPY to a file, CSV into Arrow", "cast to the schema (sql_table)",
             "encode and compress"],
            0.0,
        )  # fmt: skip
        sql_rows = 0
        with tempfile.TemporaryFile() as spool:
            writer = make_writer(output_format, spool, ORDERS_SQL.record_schema)
            batches = sql_source.read_range_text(1, 1 + chunk_size)
            while True:
                began = time.perf_counter()
                batch = next(batches, None)
                sql_spent["COPY to a file, CSV into Arrow"] += time.perf_counter() - began
                if batch is None:
                    break
                began = time.perf_counter()
                records = sql_table(batch, ORDERS_SQL.record_schema)
                sql_spent["cast to the schema (sql_table)"] += time.perf_counter() - began
                began = time.perf_counter()
                writer.write_table(records)
                sql_spent["encode and compress"] += time.perf_counter() - began
                sql_rows += batch.num_rows
            began = time.perf_counter()
            writer.close()
            sql_spent["encode and compress"] += time.perf_counter() - began

        if attempt == 0:
            continue
        _print_profile(f"fast path (columnar transform) to {output_format}", rows, spent)
        _print_profile(f"SQL-only (orders_sql) to {output_format}", sql_rows, sql_spent)

    row_spent = dict.fromkeys(
        ["cursor, a dict per row", "row transform", "schema check (Schema.conform)",
         "encode and compress"],
        0.0,
    )  # fmt: skip
    row_rows = 0
    with tempfile.TemporaryFile() as spool:
        writer = make_writer("jsonl.gz", spool, schema)
        batches = source.read_range(1, 1 + chunk_size, 5000)
        while True:
            began = time.perf_counter()
            batch = next(batches, None)
            row_spent["cursor, a dict per row"] += time.perf_counter() - began
            if batch is None:
                break
            began = time.perf_counter()
            result = ORDERS_DAILY.row_transform(batch)
            row_spent["row transform"] += time.perf_counter() - began
            began = time.perf_counter()
            schema.conform(result.records)  # measured alone; the writer checks them again
            checked = time.perf_counter() - began
            row_spent["schema check (Schema.conform)"] += checked
            began = time.perf_counter()
            writer.write_records(result.records)
            row_spent["encode and compress"] += time.perf_counter() - began - checked
            row_rows += len(batch)
        began = time.perf_counter()
        writer.close()
        row_spent["encode and compress"] += time.perf_counter() - began
    _print_profile("row path (orders_daily without its columnar transform) to jsonl.gz",
                   row_rows, row_spent)  # fmt: skip
    engine.dispose()


def main() -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--chunk-size", type=int, default=ORDERS_DAILY.chunk_size, help="keys per chunk"
    )
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--formats", default="jsonl.gz,parquet")
    parser.add_argument(
        "--sql-formats",
        default="jsonl.gz,parquet",
        help="formats of the SQL-only pipeline's runs (d); empty for none",
    )
    parser.add_argument(
        "--row-formats",
        default="",
        help="formats of the row-transform pipeline's runs (e), e.g. jsonl.gz; none by default",
    )
    parser.add_argument(
        "--scale-rows", type=int, default=0, help="also run the pipeline on this many rows"
    )
    parser.add_argument("--profile", action="store_true", help="profile one chunk and stop")
    args = parser.parse_args()
    formats = args.formats.split(",")
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
    try:
        client = make_s3_client(settings.s3_endpoint_url, settings.s3_region)
        build_services(settings).parts.ensure_bucket()
        seeded_s = ensure_seeded(settings, args.rows)
        print(f"load average before: {os.getloadavg()}", flush=True)
        results = [naive(settings, client, args.rows), copy_limit(settings, client, args.rows)]
        runs = (
            [(fmt, "pipeline") for fmt in formats]
            + [(fmt, "sql") for fmt in sql_formats]
            + [(fmt, "rows") for fmt in row_formats]
        )
        for fmt, kind in runs:
            results.append(
                pipeline_run(settings, args.rows, args.chunk_size, args.concurrency, fmt, kind)
            )
        if args.scale_rows:
            big = bench_settings(args.scale_rows).model_copy(update={"s3_endpoint_url": endpoint})
            ensure_seeded(big, args.scale_rows)
            for fmt, kind in runs:
                scaled.append(
                    pipeline_run(big, args.scale_rows, args.chunk_size, args.concurrency, fmt, kind)
                )
    finally:
        if local_s3 is not None:
            local_s3.__exit__(None, None, None)
    checked = targets(results, scaled, args.scale_rows)
    print(table(results + scaled, checked))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench-{args.rows}"
    document = {
        "rows": args.rows,
        "scale_rows": args.scale_rows or None,
        "chunk_size": args.chunk_size,
        "concurrency": args.concurrency,
        "seed_s": round(seeded_s, 2),
        "load_average": os.getloadavg(),
        "results": [asdict(m) | {"rows_per_s": m.rows_per_s} for m in results + scaled],
        "targets": [asdict(t) | {"met": t.met} for t in checked],
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    drawn = chart(results + scaled, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + (f" and {stem}.png" if drawn else " (no matplotlib: no chart)"))
    return 0 if all(target.met for target in checked) else 1


if __name__ == "__main__":
    raise SystemExit(main())
