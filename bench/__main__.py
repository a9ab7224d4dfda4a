"""``python -m bench [--rows N]``: measure, in one process tree and one run,

a. the naive script: one Python process, a server-side cursor, csv + gzip, one PUT;
b. the limit: ``COPY (SELECT ...) TO STDOUT`` into gzip level 1 (zlib, in C), one PUT,
   no Python rows;
c. the pipeline, trigger to committed manifest, with a real ``etl worker`` over RabbitMQ,
   for jsonl.gz and parquet;

and print one table, and write ``bench/results/bench-<rows>.json`` and ``.png``.
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

from etl.adapters.s3 import LocalS3, make_s3_client
from etl.bootstrap import build_services
from etl.celery_app import make_celery
from etl.config import Settings, load_settings, settings_env
from etl.demo import seed_orders
from etl.domain.runs import RunState
from etl.runs import RunService, celery_enqueue, wait_for_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COLUMNS = "id, customer_email, amount, currency, status, created_at, updated_at"
BENCH_DATABASE = "etl_bench"
BENCH_VHOST = "etl-bench"


@dataclass
class Measurement:
    """One line of the table."""

    name: str
    wall_s: float
    rows: int
    chunks: int | None = None
    overhead_ms_per_chunk: float | None = None
    worker_peak_rss_mb: list[float] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0


def bench_settings() -> Settings:
    """The configured services, but a database and a vhost of the benchmark's own."""
    base = load_settings()
    admin = create_engine(base.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": BENCH_DATABASE}
        ).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    admin.dispose()
    database = make_url(base.database_url).set(database=BENCH_DATABASE)
    broker = base.broker_url
    if shutil.which("rabbitmqctl"):
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
            "broker_url": broker,
            "s3_bucket": "etl-bench",
            "pipeline_modules": "bench.pipelines",
            "task_soft_time_limit_s": 1700,
            "task_time_limit_s": 1750,
            "rabbitmq_consumer_timeout_s": 3600,
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

    url = make_url(settings.database_url)
    began = time.monotonic()
    with tempfile.TemporaryFile() as spool:
        with gzip.GzipFile(fileobj=spool, mode="wb", mtime=0) as gz:
            text_out = io.TextIOWrapper(gz, encoding="utf-8", newline="")
            writer = csv.writer(text_out)
            with psycopg2.connect(
                host=url.host, port=url.port, user=url.username, password=url.password,
                dbname=url.database,
            ) as conn, conn.cursor(name="naive") as cursor:  # fmt: skip
                cursor.itersize = 10_000
                cursor.execute(f"SELECT {COLUMNS} FROM orders ORDER BY id")
                for row in cursor:
                    writer.writerow(row)
            text_out.flush()
            text_out.detach()
        spool.seek(0)
        client.upload_fileobj(spool, settings.s3_bucket, "bench/naive.csv.gz")
    return Measurement("a. naive script (cursor, csv, gzip, PUT)", time.monotonic() - began, rows)


def copy_limit(settings: Settings, client: Any, rows: int) -> Measurement:
    """COPY to STDOUT straight into gzip level 1, one PUT: no Python rows."""
    import psycopg2

    url = make_url(settings.database_url)
    began = time.monotonic()
    connection = psycopg2.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        dbname=url.database,
    )  # fmt: skip
    with (
        tempfile.TemporaryFile() as spool,
        connection as conn,
        conn.cursor() as cursor,
    ):
        with gzip.GzipFile(fileobj=spool, mode="wb", compresslevel=1, mtime=0) as gz:
            cursor.copy_expert(
                f"COPY (SELECT {COLUMNS} FROM orders ORDER BY id) TO STDOUT WITH (FORMAT csv)", gz
            )
        spool.seek(0)
        client.upload_fileobj(spool, settings.s3_bucket, "bench/copy.csv.gz")
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


def pipeline_runs(
    settings: Settings, rows: int, chunk_size: int, concurrency: int, formats: list[str]
) -> list[Measurement]:
    """The pipeline with a real worker, one run per format, trigger to commit."""
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    log = tempfile.NamedTemporaryFile(prefix="etl-bench-worker-", suffix=".log", delete=False)  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "etl", "worker", "--concurrency", str(concurrency)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    services = build_services(settings)
    measurements = []
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in Path(log.name).read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start:\n" + Path(log.name).read_text())
            time.sleep(0.2)
        service = RunService(services.ledger, celery_enqueue(make_celery(settings)))
        for index, fmt in enumerate(formats):
            pipeline = "orders_daily" if fmt == "jsonl.gz" else "orders_parquet"
            run, _ = service.start_run(
                pipeline,
                logical_date=date(2000, 1, 1 + index),
                params={"chunk_size": chunk_size},
                idempotency_key=f"bench-{time.time()}-{fmt}",
            )
            final = wait_for_run(services.ledger, run.id, timeout_s=3600, poll_s=0.05)
            if final.state is not RunState.SUCCEEDED:
                raise RuntimeError(f"the {fmt} run {final.state}: {final.reason}")
            assert final.finished_at is not None
            wall = (final.finished_at - final.created_at).total_seconds()
            chunks = services.ledger.get_chunks(run.id)
            work = sum(
                (c.finished_at - c.started_at).total_seconds()
                for c in chunks
                if c.finished_at and c.started_at
            )
            overhead = (wall - work / concurrency) / len(chunks) * 1000 if chunks else None
            measurements.append(
                Measurement(
                    f"c. pipeline, {fmt} ({concurrency} worker processes)",
                    wall,
                    rows,
                    chunks=len(chunks),
                    overhead_ms_per_chunk=overhead,
                    worker_peak_rss_mb=peak_rss_mb(worker.pid),
                )
            )
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=60)
        services.close()
    return measurements


def table(results: list[Measurement]) -> str:
    """The printed table: ratios to the naive script (a) and to the limit (b)."""
    naive_rate, limit_rate = results[0].rows_per_s, results[1].rows_per_s
    lines = [
        f"{'':46} {'wall s':>8} {'rows/s':>10} {'x a':>6} {'x b':>6} {'chunks':>6} "
        f"{'ms/chunk':>8}  peak RSS MB (main, pool)"
    ]
    for m in results:
        overhead = f"{m.overhead_ms_per_chunk:.1f}" if m.overhead_ms_per_chunk is not None else ""
        lines.append(
            f"{m.name:46} {m.wall_s:8.2f} {m.rows_per_s:10,.0f} {m.rows_per_s / naive_rate:6.2f} "
            f"{m.rows_per_s / limit_rate:6.2f} {m.chunks or '':>6} {overhead:>8}  "
            f"{', '.join(str(x) for x in m.worker_peak_rss_mb)}"
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
    names = [m.name.split(" (")[0] for m in results]
    axis.barh(names, [m.rows_per_s for m in results], color="#3b7dd8")
    axis.invert_yaxis()
    axis.set_xlabel("rows per second")
    axis.set_title(f"{results[0].rows:,} orders rows")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main() -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=125_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--formats", default="jsonl.gz,parquet")
    args = parser.parse_args()

    settings = bench_settings()
    local_s3 = None
    if not settings.s3_endpoint_url:
        local_s3 = LocalS3()
        local_s3.__enter__()
        settings = settings.model_copy(update={"s3_endpoint_url": local_s3.endpoint_url})
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    try:
        client = make_s3_client(settings.s3_endpoint_url, settings.s3_region)
        build_services(settings).parts.ensure_bucket()
        seeded_s = ensure_seeded(settings, args.rows)
        print(f"load average before: {os.getloadavg()}", flush=True)
        results = [naive(settings, client, args.rows), copy_limit(settings, client, args.rows)]
        results += pipeline_runs(
            settings, args.rows, args.chunk_size, args.concurrency, args.formats.split(",")
        )
    finally:
        if local_s3 is not None:
            local_s3.__exit__(None, None, None)
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench-{args.rows}"
    document = {
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "concurrency": args.concurrency,
        "seed_s": round(seeded_s, 2),
        "load_average": os.getloadavg(),
        "results": [asdict(m) | {"rows_per_s": m.rows_per_s} for m in results],
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2))
    drawn = chart(results, stem.with_suffix(".png"))
    print(f"wrote {stem}.json" + (f" and {stem}.png" if drawn else " (no matplotlib: no chart)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
