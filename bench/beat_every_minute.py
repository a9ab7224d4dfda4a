"""``python -m bench.beat_every_minute``: does a real Beat with ``Every(60)`` start one run
per minute, each covering its own minute (issue 14: such slots used to collapse into one
run a day)?

On a RabbitMQ vhost, a PostgreSQL database (Beat's leader lock is per database) and a
moto S3 server of its own, all removed at the end, it seeds ``bench_ticks`` with one row
a second around now, starts one ``etl worker`` and, two seconds after a whole minute, a
real ``etl beat``, and leaves Beat running for 3 minutes and a few seconds: Beat starts
from "now", so its first slot is the next whole minute and three slots pass. Then it
stops Beat, waits for the worker, and prints the scheduled runs of ``bench_every_minute``
from the ledger. PASS when there is exactly one run per slot Beat passed, each covering
the 60 seconds before its slot, the intervals consecutive, and each run wrote the 60 rows
of its minute. Takes about 4 to 5 minutes. Exit code 0 on PASS, 1 on FAIL.

Beat and the worker load this module as their pipeline module (ETL_PIPELINE_MODULES).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Text, select

from bench.harness import Etl, pass_through, scratch_services, workers
from etl.adapters.db import replace_table
from etl.adapters.ledger.schema import schedule_ticks_table
from etl.bootstrap import build_services
from etl.domain.runs import Run, RunState, Trigger
from etl.domain.schedules import Every
from etl.pipelines.base import Pipeline, Source

SLOT = timedelta(seconds=60)

TICKS_TABLE = Table(
    "bench_ticks",
    MetaData(),
    Column("id", BigInteger, primary_key=True),
    Column("event_at", DateTime(timezone=True), nullable=False, index=True),
    Column("payload", Text, nullable=False),
)


BENCH_EVERY_MINUTE = Pipeline(
    name="bench_every_minute",
    description="One row a second, one run a minute (partitioned by event_at).",
    source=Source(
        table=TICKS_TABLE.name,
        key_column="id",
        columns=("id", "event_at", "payload"),
        time_column="event_at",
    ),
    transform=pass_through,
    schema=(("id", "integer"), ("event_at", "timestamp"), ("payload", "string")),
    chunk_size=25,
    schedule=Every(60),
)
PIPELINES = [BENCH_EVERY_MINUTE]
ENTRY = f"pipeline:{BENCH_EVERY_MINUTE.name}"


def whole_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def run_line(run: Run) -> str:
    """A run's interval, state and rows, and when it was created and done after its slot."""
    length = (run.interval.end - run.interval.start).total_seconds()
    created = (run.created_at - run.interval.end).total_seconds()
    done = (run.finished_at - run.interval.end).total_seconds() if run.finished_at else 0.0
    return (
        f"  {run.logical_date}  {run.interval}  {length:3.0f} s  {run.state:9}  "
        f"{run.rows_written or 0:3} rows  created at slot+{created:.1f} s, done at +{done:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.beat_every_minute", description=__doc__)
    parser.add_argument("--slots", type=int, default=3, help="slots to leave Beat running for")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="etl-bench-beat-"))
    failures: list[str] = []

    with scratch_services("etl_bench_beat", "bench.beat_every_minute") as settings:
        services = build_services(settings)
        try:
            services.parts.ensure_bucket()
            # One row a second from 2 minutes ago to well after Beat stops.
            origin = whole_minute(datetime.now(UTC)) - 2 * SLOT
            seconds = (args.slots + 8) * 60
            rows = ((n + 1, origin + timedelta(seconds=n), f"tick {n}") for n in range(seconds))
            replace_table(services.source_engine, TICKS_TABLE, rows)

            with workers(settings, logs, 1) as [worker]:
                sleep_until(whole_minute(datetime.now(UTC)) + SLOT + timedelta(seconds=2))
                beat = Etl(["beat"], settings, logs / "beat.log")
                try:
                    began = datetime.now(UTC)
                    found = beat.wait_for_log(rf"new entry {ENTRY} starts after (.+)")
                    after = datetime.fromisoformat(found.group(1).strip())
                    first = whole_minute(after) + SLOT
                    print(f"beat started {began:%H:%M:%S}; {ENTRY} starts after {after:%H:%M:%S}")
                    sleep_until(first + (args.slots - 1) * SLOT + timedelta(seconds=8))
                finally:
                    stopped = datetime.now(UTC)
                    beat.stop()
                ran = (stopped - began).total_seconds()
                print(
                    f"beat stopped {stopped:%H:%M:%S}, after {ran // 60:.0f} min {ran % 60:.0f} s"
                )
                slots = [first + n * SLOT for n in range(args.slots)]
                with services.ledger.engine.connect() as conn:
                    sent = list(
                        conn.execute(
                            select(schedule_ticks_table.c.slot)
                            .where(schedule_ticks_table.c.entry == ENTRY)
                            .order_by(schedule_ticks_table.c.slot)
                        ).scalars()
                    )
                deadline = time.monotonic() + 120

                def scheduled() -> list[Run]:
                    found = services.ledger.list_runs(
                        pipeline=BENCH_EVERY_MINUTE.name, trigger=Trigger.SCHEDULE, limit=100
                    )
                    return sorted(found, key=lambda run: run.interval.start)

                while time.monotonic() < deadline and (
                    len(scheduled()) < len(sent) or not all(r.is_terminal for r in scheduled())
                ):
                    time.sleep(0.5)
                runs = scheduled()
                problems = worker.problems() + beat.problems()
        finally:
            services.close()

    print(f"slots Beat passed: {', '.join(f'{s:%H:%M:%S}' for s in slots)}")
    print(f"slots Beat sent:   {', '.join(f'{s:%H:%M:%S}' for s in sent)}")
    print(f"{len(runs)} scheduled runs of {BENCH_EVERY_MINUTE.name}:")
    for run in runs:
        print(run_line(run))
    print(f"worker and beat log lines with errors: {len(problems)}")
    for problem in problems[:10]:
        print(f"  {problem}")
    print(f"logs: {logs}")

    if sent != slots:
        failures.append(f"Beat sent {len(sent)} slots, not the {len(slots)} it passed")
    intervals = [(run.interval.start, run.interval.end) for run in runs]
    if intervals != [(slot - SLOT, slot) for slot in slots]:
        failures.append(f"{len(runs)} runs, not one per slot covering the minute before it")
    if any(a.interval.end != b.interval.start for a, b in pairwise(runs)):
        failures.append("the intervals are not consecutive")
    bad = [r for r in runs if r.state is not RunState.SUCCEEDED or r.rows_written != 60]
    if bad:
        failures.append(f"{len(bad)} runs did not succeed with their minute's 60 rows")
    if problems:
        failures.append(f"{len(problems)} error lines in the logs")
    print(
        "\n".join(f"FAIL: {failure}" for failure in failures)
        or f"PASS: {len(slots)} slots, {len(runs)} runs, one per minute, none collapsed"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
