"""Runs that read their own data interval, end to end (issue 14): real worker processes
load tests/interval_pipelines.py; a backfill of a partitioned pipeline writes each Berlin
day's rows into that day's run, every row of the range exactly once; a query source reads
the interval and the region its run was given, and a hostile region is only a value."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from interval_pipelines import EVENTS_TABLE, seed_events
from sqlalchemy import text

from etl.bootstrap import Services, build_services
from etl.config import Settings
from etl.domain.runs import Run, RunState

from builders import read_json_lines_gzip
from support import etl_workers, run_etl

pytestmark = pytest.mark.e2e

TESTS_DIR = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(TESTS_DIR)}
BERLIN = ZoneInfo("Europe/Berlin")
FIRST_DAY = date(2030, 3, 1)  # ten days of events
DAYS = 10


def berlin_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), BERLIN)


def seeded_events() -> list[tuple[int, datetime, str]]:
    """About 60 events a Berlin day at random moments, plus one exactly at each local
    midnight and one a microsecond before it: the edges a partition must get right."""
    rng = random.Random(14)
    moments = []
    for offset in range(DAYS):
        start = berlin_midnight(FIRST_DAY + timedelta(days=offset))
        moments += [start, start + timedelta(days=1) - timedelta(microseconds=1)]
        moments += [start + timedelta(seconds=rng.randrange(86_400)) for _ in range(60)]
    return [
        (number, moment, rng.choice(["eu", "us"]))
        for number, moment in enumerate(sorted(moments), start=1)
    ]


EVENTS = seeded_events()


def ids_on(day: date, region: str | None = None) -> list[int]:
    start, end = berlin_midnight(day), berlin_midnight(day + timedelta(days=1))
    return [
        number
        for number, moment, where in EVENTS
        if start <= moment < end and region in (None, where)
    ]


@pytest.fixture(scope="module")
def interval_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"pipeline_modules": "interval_pipelines"})


@pytest.fixture(scope="module")
def interval_services(
    interval_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    built = build_services(interval_settings)
    built.parts.ensure_bucket()
    assert seed_events(built.source_engine, EVENTS) == len(EVENTS)
    logs = tmp_path_factory.mktemp("intervals")
    try:
        with etl_workers(interval_settings, logs, count=2, extra_env=ENV):
            yield built
    finally:
        EVENTS_TABLE.drop(built.source_engine, checkfirst=True)
        built.close()


def output_of(services: Services, run: Run) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A committed run's manifest and its records, read through the manifest."""
    assert run.state is RunState.SUCCEEDED, run.reason
    manifest = json.loads(services.parts.get_bytes(run.manifest_key or ""))
    records = [
        record
        for part in manifest["parts"]
        for record in read_json_lines_gzip(services.parts.get_bytes(part["key"]))
    ]
    return manifest, records


def test_a_backfill_of_a_partitioned_pipeline_writes_each_days_rows_once(
    interval_services: Services, interval_settings: Settings
) -> None:
    first, last = FIRST_DAY + timedelta(days=2), FIRST_DAY + timedelta(days=8)
    ran = run_etl(
        interval_settings, "backfill", "events_daily", "--start", str(first), "--end",
        str(last), "--max-active", "3", "--timeout", "240", timeout_s=300, **ENV,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = re.search(r"backfill ([0-9a-f-]{36}) started: 7 runs", ran.stdout)
    assert found is not None, ran.stdout
    runs = interval_services.ledger.backfill_runs(found.group(1))

    every_id: Counter[int] = Counter()
    for run in runs:
        manifest, records = output_of(interval_services, run)
        ids = sorted(record["id"] for record in records)
        # exactly this Berlin day's events, the ones at its midnights included
        assert ids == ids_on(run.logical_date), run.logical_date
        assert manifest["mode"] == "partitioned"
        assert manifest["partition"] == f"dt={run.logical_date}"
        assert manifest["interval"] == {
            "start": berlin_midnight(run.logical_date)
            .astimezone(run.interval.start.tzinfo)
            .isoformat(),
            "end": berlin_midnight(run.logical_date + timedelta(days=1))
            .astimezone(run.interval.start.tzinfo)
            .isoformat(),
        }
        every_id.update(ids)
    days = [first + timedelta(days=offset) for offset in range(7)]
    assert sorted(run.logical_date for run in runs) == days
    assert sorted(every_id) == sorted(i for day in days for i in ids_on(day))
    assert set(every_id.values()) == {1}  # no row twice
    # The days before and after the range were not read by any run.
    outside = set(ids_on(FIRST_DAY)) | set(ids_on(FIRST_DAY + timedelta(days=9)))
    assert not outside & set(every_id)
    print(
        f"\n7 runs, {sum(every_id.values())} rows, each day's own: {[len(ids_on(d)) for d in days]}"
    )


def test_a_query_source_reads_its_runs_interval_and_region_and_a_hostile_one_reads_none(
    interval_services: Services, interval_settings: Settings
) -> None:
    day = FIRST_DAY + timedelta(days=4)
    ran = run_etl(
        interval_settings, "run", "events_by_region", "--interval", str(day), "--param",
        "region=eu", "--wait", "--timeout", "120", **ENV,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = re.search(r"run ([0-9a-f-]{36}) started", ran.stdout)
    assert found is not None, ran.stdout
    _, records = output_of(interval_services, interval_services.ledger.get_run(found.group(1)))
    assert sorted(record["id"] for record in records) == ids_on(day, "eu")
    assert {record["region"] for record in records} == {"eu"}

    hostile = f"eu' OR ''='; DROP TABLE {EVENTS_TABLE.name}; --"
    ran = run_etl(
        interval_settings, "run", "events_by_region", "--interval", str(day), "--param",
        f"region={hostile}", "--wait", "--timeout", "120", **ENV,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    found = re.search(r"run ([0-9a-f-]{36}) started", ran.stdout)
    assert found is not None, ran.stdout
    _, records = output_of(interval_services, interval_services.ledger.get_run(found.group(1)))
    assert records == []
    with interval_services.source_engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {EVENTS_TABLE.name}")).scalar_one()
    assert count == len(EVENTS)
