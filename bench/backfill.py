"""``python -m bench.backfill`` (``make bench-backfill``): how long a backfill of 30 daily
intervals of 100,000 rows each takes, and what each run read (issue 14).

On a RabbitMQ vhost, a PostgreSQL database and a moto S3 server of its own (all removed
at the end), it seeds ``bench_events``: ``--days`` Berlin days from 2026-03-15 (so the
23-hour day of 2026-03-29 is among them) of ``--rows-per-day`` rows each, spread evenly
over each local day, the first exactly at local midnight, ids in time order. The
pipeline below, ``bench_events_daily``, reads it partitioned by ``event_at``, one run a
Berlin day, in chunks of 50,000 rows to jsonl.gz. With two ``etl worker --concurrency 1``
processes it times ``etl backfill bench_events_daily --start <day 1> --end <day N>
--max-active 2`` end to end, then prints each run from the ledger and checks, through
its manifest, that it wrote exactly its own day's rows (the ids the database counts for
that Berlin day, none twice) and that the runs together wrote every row once.
Exit code 0 on PASS, 1 on FAIL.

The workers load this module as their pipeline module (ETL_PIPELINE_MODULES).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Column, DateTime, Engine, MetaData, Table, Text, text

from bench.harness import ROOT, pass_through, scratch_services, workers
from etl.adapters.db import replace_table
from etl.bootstrap import Services, build_services
from etl.config import Settings, settings_env
from etl.domain.runs import Run, RunState
from etl.domain.schedules import Cron
from etl.formats.encoding import read_part
from etl.pipelines.base import Pipeline, Source

TIMEZONE = "Europe/Berlin"
BERLIN = ZoneInfo(TIMEZONE)
FIRST_DAY = date(2026, 3, 15)
KINDS = ("view", "click", "purchase", "signup")

EVENTS_TABLE = Table(
    "bench_events",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    # A table read by time has an index on its time column.
    Column("event_at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", Text, nullable=False),
    Column("payload", Text, nullable=False),
)
COLUMNS = ("id", "event_at", "kind", "payload")


BENCH_EVENTS_DAILY = Pipeline(
    name="bench_events_daily",
    description="Benchmark events, one run per Berlin day (partitioned by event_at).",
    source=Source(
        table=EVENTS_TABLE.name, key_column="id", columns=COLUMNS, time_column="event_at"
    ),
    transform=pass_through,
    schema=(
        ("id", "integer"),
        ("event_at", "timestamp"),
        ("kind", "string"),
        ("payload", "string"),
    ),
    chunk_size=50_000,
    output_format="jsonl.gz",
    schedule=Cron("0 2 * * *", TIMEZONE),
)
PIPELINES = [BENCH_EVENTS_DAILY]


def midnight(day: date) -> datetime:
    """The instant a Berlin day starts, in UTC."""
    return datetime.combine(day, wall_time(0), BERLIN).astimezone(UTC)


def events(days: int, per_day: int) -> Iterator[tuple[int, datetime, str, str]]:
    """``per_day`` rows spread evenly over each Berlin day (computed in UTC: adding to a
    Berlin wall time would skip DST's missing hour), ids in time order."""
    number = 0
    for offset in range(days):
        start = midnight(FIRST_DAY + timedelta(days=offset))
        length_us = (midnight(FIRST_DAY + timedelta(days=offset + 1)) - start) // timedelta(
            microseconds=1
        )
        for k in range(per_day):
            number += 1
            moment = start + timedelta(microseconds=length_us * k // per_day)
            yield number, moment, KINDS[number % 4], f"user-{number * 7919 % 100_003}"


def seeded_by_day(engine: Engine) -> dict[date, tuple[int, int, int]]:
    """(rows, smallest id, largest id) of each Berlin day, as the database counts them."""
    query = text(
        "SELECT (event_at AT TIME ZONE :zone)::date AS day, count(*), min(id), max(id) "
        f"FROM {EVENTS_TABLE.name} GROUP BY 1 ORDER BY 1"
    )
    with engine.connect() as conn:
        return {day: (n, lo, hi) for day, n, lo, hi in conn.execute(query, {"zone": TIMEZONE})}


def ids_written(services: Services, run: Run) -> list[int]:
    """The ids of every record a run's manifest lists."""
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    return [
        record["id"]
        for part in manifest["parts"]
        for record in read_part(services.parts.get_bytes(part["key"]), manifest["format"])
    ]


def backfill(settings: Settings, days: int, max_active: int, log: Path) -> tuple[str, float]:
    """Run `etl backfill` to the end; (its backfill id, wall seconds)."""
    last = FIRST_DAY + timedelta(days=days - 1)
    argv = [sys.executable, "-m", "etl", "backfill", BENCH_EVENTS_DAILY.name]
    argv += ["--start", str(FIRST_DAY), "--end", str(last), "--max-active", str(max_active)]
    env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.monotonic() - began
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"etl backfill exited {done.returncode}:\n{done.stdout[-3000:]}")
    started = next(line for line in done.stdout.splitlines() if " started: " in line)
    print(started.strip())
    return started.split()[1], wall


HEADER = (
    f"{'date':10}  {'interval (UTC)':54} {'hours':>5} {'rows':>9} {'chunks':>6}  "
    f"{'chunk rows':13} {'run s':>6}  ids read"
)


def check_run(services: Services, run: Run, seeded: tuple[int, int, int]) -> tuple[str, set[int]]:
    """A run's line and the ids it wrote; the line ends in "ok" if the run wrote exactly
    its own Berlin day's rows (``seeded``: their count, smallest and largest id)."""
    want, lo, hi = seeded
    day = run.logical_date
    ids = ids_written(services, run) if run.state is RunState.SUCCEEDED else []
    right = (
        run.state is RunState.SUCCEEDED
        and run.rows_written == want == len(ids) == len(set(ids))
        and (min(ids, default=0), max(ids, default=0)) == (lo, hi)
        and (run.interval.start, run.interval.end)
        == (midnight(day), midnight(day + timedelta(days=1)))
    )
    chunks = services.ledger.get_chunks(run.id)
    hours = (run.interval.end - run.interval.start) / timedelta(hours=1)
    took = 0.0
    if run.started_at and run.finished_at:
        took = (run.finished_at - run.started_at).total_seconds()
    line = (
        f"{day!s:10}  {run.interval!s:54} {hours:5g} {run.rows_written or 0:9,} {len(chunks):6}  "
        f"{'/'.join(str(c.rows) for c in chunks):13} {took:6.1f}  "
        f"{min(ids, default=0)}..{max(ids, default=0)} "
        + ("ok" if right else f"WRONG: {run.state} {run.reason or ''}; seeded {want} {lo}..{hi}")
    )
    return line, set(ids) if right else set()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--max-active", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="etl worker --concurrency 1 each")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="etl-bench-backfill-"))
    total = args.days * args.rows_per_day

    with scratch_services("etl_bench_backfill", "bench.backfill") as settings:
        services = build_services(settings)
        try:
            services.parts.ensure_bucket()
            began = time.monotonic()
            rows = events(args.days, args.rows_per_day)
            seeded = replace_table(services.source_engine, EVENTS_TABLE, rows)
            with services.source_engine.begin() as conn:
                conn.execute(text(f"ANALYZE {EVENTS_TABLE.name}"))
            per_day = seeded_by_day(services.source_engine)
            took = time.monotonic() - began
            print(f"seeded {seeded:,} rows, {len(per_day)} Berlin days, in {took:.0f} s")

            with workers(settings, logs, args.workers) as started:
                backfill_id, wall = backfill(
                    settings, args.days, args.max_active, logs / "backfill.log"
                )
            problems = [line for worker in started for line in worker.problems()]
            runs = sorted(
                services.ledger.backfill_runs(backfill_id), key=lambda r: r.interval.start
            )
            print("\n" + HEADER)
            every_id: set[int] = set()
            wrong = 0
            for run in runs:
                line, ids = check_run(services, run, per_day.get(run.logical_date, (0, 0, 0)))
                print(line)
                wrong += not ids
                every_id |= ids
        finally:
            services.close()

    written = sum(run.rows_written or 0 for run in runs)
    span = max(r.finished_at or r.created_at for r in runs) - min(r.created_at for r in runs)
    print(
        f"\n{len(runs)} runs, {written:,} rows written; {args.workers} workers x 1 process, "
        f"--max-active {args.max_active}\n"
        f"wall time, etl backfill end to end: {wall:.1f} s ({written / wall:,.0f} rows/s)\n"
        f"first run created to last finished: {span.total_seconds():.1f} s\n"
        f"worker log lines with errors: {len(problems)}"
    )
    for problem in problems[:10]:
        print(f"  {problem}")
    print(f"logs: {logs}")
    failures = [f"{wrong} runs did not write exactly their day's rows"] if wrong else []
    if len(runs) != args.days:
        failures.append(f"{len(runs)} runs, not {args.days}")
    if written != total or len(every_id) != total:
        failures.append(f"{written:,} rows written, {len(every_id):,} right ids, not {total:,}")
    print(
        "\n".join(f"FAIL: {failure}" for failure in failures)
        or f"PASS: every run wrote its day's rows, {total:,} in all"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
