"""Runs by data interval on the SQLite ledger: an hourly pipeline's backfill over the
daylight-saving days, one run per slot, intervals named by date or timestamp, the
version 6 ledger migrated, and the S3 partition of a sub-daily run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from interval_pipelines import EVENTS_BY_REGION, EVENTS_DAILY, EVENTS_HOURLY, seed_events
from sqlalchemy import Engine, delete, inspect, text

from etl.adapters.ledger import Ledger, upgrade
from etl.adapters.ledger.schema import SCHEMA_VERSION, schema_version_table
from etl.bootstrap import Services
from etl.cli import main
from etl.domain.intervals import Grain, GrainKind
from etl.domain.layout import parse_run_object_key, partition_path, run_prefix
from etl.domain.runs import RunState, Trigger
from etl.pipelines import PIPELINES
from etl.service import execution as steps
from etl.service.backfills import start_backfill
from etl.service.lifecycle import RunService

from builders import api_app, auth, new_run, read_json_lines_gzip
from fakes import RecordingEnqueue

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(autouse=True)
def interval_pipelines() -> Iterator[None]:
    added = {p.name: p for p in (EVENTS_DAILY, EVENTS_HOURLY, EVENTS_BY_REGION)}
    PIPELINES.update(added)
    yield
    for name in added:
        del PIPELINES[name]


@pytest.fixture
def runs(ledger: Ledger) -> RunService:
    return RunService(ledger, RecordingEnqueue())


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25)])
def test_an_hourly_berlin_backfill_over_a_change_of_clocks_has_a_run_per_hour(
    runs: RunService, day: date, hours: int
) -> None:
    backfill, plans = start_backfill(runs, "events_hourly", start=day, end=day, max_active=4)
    assert backfill is not None and len(plans) == hours

    created = runs.ledger.backfill_runs(backfill.id)
    intervals = [run.interval for run in created]
    assert len(created) == hours
    assert intervals[0].start == datetime.combine(day, datetime.min.time(), BERLIN)
    assert intervals[-1].end == datetime.combine(
        day + timedelta(days=1), datetime.min.time(), BERLIN
    )
    assert all(a.end == b.start for a, b in pairwise(intervals))
    assert all(i.end - i.start == timedelta(hours=1) for i in intervals)
    assert {run.logical_date for run in created} == {day}
    # Backfilled again, every hour already has its run: nothing new is started.
    again, plans = start_backfill(runs, "events_hourly", start=day, end=day, max_active=4)
    assert again is None and not any(plan.run for plan in plans)


def test_a_backfill_over_timestamps_runs_the_intervals_from_the_first_to_the_last_named(
    runs: RunService,
) -> None:
    start = datetime(2026, 11, 22, 22, tzinfo=UTC)
    backfill, plans = start_backfill(
        runs, "events_hourly", start=start, end=start + timedelta(hours=3), max_active=1
    )
    assert backfill is not None
    assert [plan.name for plan in plans] == [
        f"2026-11-22T{hour}:00:00+00:00" for hour in ("22", "23")
    ] + [f"2026-11-23T0{hour}:00:00+00:00" for hour in (0, 1)]
    # The days of a timestamp range are those of its intervals, in Berlin.
    assert (backfill.start, backfill.end) == (date(2026, 11, 22), date(2026, 11, 23))


def test_the_dry_run_of_a_backfill_lists_the_intervals_it_would_run(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", str(ledger.engine.url))
    monkeypatch.setenv("ETL_PIPELINE_MODULES", "interval_pipelines")
    code = main(
        ["backfill", "events_hourly", "--start", "2026-03-29", "--end", "2026-03-29", "--dry-run"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if "would run" in line]
    assert len(lines) == 23
    assert lines[0][0] == "2026-03-28T23:00:00+00:00"  # midnight in Berlin, CET
    assert lines[2][0] == "2026-03-29T01:00:00+00:00"  # 03:00 CEST: 02:00 never happened
    assert ledger.list_runs() == []


def test_each_slot_of_an_hourly_schedule_starts_its_own_run_and_a_repeat_finds_it(
    runs: RunService,
) -> None:
    schedule = EVENTS_HOURLY.schedule
    assert schedule is not None
    first_slot = schedule.next_after(datetime(2026, 11, 22, 12, tzinfo=UTC))
    slots = [first_slot, schedule.next_after(first_slot)]
    names = [schedule.grain.name(schedule.interval_for(slot)) for slot in slots]

    started = [
        runs.start_run("events_hourly", interval=name, trigger=Trigger.SCHEDULE)
        for name in names + names[:1]
    ]

    assert [created for _, created in started] == [True, True, False]
    assert started[2][0].id == started[0][0].id
    assert [run.interval.start for run, _ in started[:2]] == [
        datetime(2026, 11, 22, 11, tzinfo=UTC),
        datetime(2026, 11, 22, 12, tzinfo=UTC),
    ]


def test_a_run_named_by_something_its_pipeline_does_not_have_is_refused_saying_why(
    runs: RunService,
) -> None:
    with pytest.raises(ValueError, match=r"named by the timestamp that starts it, e\.g\. "):
        runs.start_run("events_hourly", interval="2026-11-22")
    with pytest.raises(ValueError, match="does not start an interval"):
        runs.start_run("events_hourly", interval="2026-11-22T14:30:00+01:00")
    with pytest.raises(ValueError, match=r"e\.g\. 2026-11-21T23:00:00\+00:00, not a date"):
        runs.start_run("events_hourly", interval=date(2026, 11, 22))
    assert runs.ledger.list_runs() == []


def test_the_api_starts_a_run_of_an_interval_and_names_what_is_wrong_with_one(
    client: FlaskClient,
) -> None:
    started = client.post(
        "/api/v1/runs",
        json={"pipeline": "events_hourly", "interval": "2026-11-22T14:00:00+01:00"},
        headers=auth(),
    )
    assert started.status_code == 202, started.json
    assert started.json["interval"] == {
        "start": "2026-11-22T13:00:00Z",
        "end": "2026-11-22T14:00:00Z",
    }
    assert started.json["logical_date"] == "2026-11-22"

    refused = client.post(
        "/api/v1/runs",
        json={"pipeline": "events_hourly", "interval": "2026-11-22"},
        headers=auth(),
    )
    assert refused.status_code == 400
    assert refused.json["details"][0]["field"] == "interval"
    assert "named by the timestamp that starts it" in refused.json["details"][0]["message"]
    both = client.post(
        "/api/v1/runs",
        json={"pipeline": "events_daily", "interval": "2026-11-22", "logical_date": "2026-11-22"},
        headers=auth(),
    )
    assert both.status_code == 400 and "not both" in str(both.json)


def test_the_api_shows_each_pipelines_interval_and_the_next_one(client: FlaskClient) -> None:
    answer = client.get("/api/v1/pipelines/events_hourly", headers=auth())
    assert answer.status_code == 200
    document = answer.json
    assert document["mode"] == "partitioned"
    assert document["interval"] == "hour (Europe/Berlin)"
    next_run = datetime.fromisoformat(document["next_run_at"])
    next_interval = document["next_interval"]
    assert datetime.fromisoformat(next_interval["end"]) <= next_run
    assert datetime.fromisoformat(next_interval["end"]) - datetime.fromisoformat(
        next_interval["start"]
    ) == timedelta(hours=1)


def test_a_version_6_ledger_gives_each_run_its_utc_day_and_keeps_its_watermarks(
    sqlite_engine: Engine,
) -> None:
    ledger = Ledger(sqlite_engine)
    scheduled = new_run(ledger, trigger=Trigger.SCHEDULE, day=date(2026, 5, 1))
    with sqlite_engine.begin() as conn:  # back to version 6: no interval, unique by date
        conn.execute(text("DROP INDEX uq_etl_runs_scheduled_interval"))
        conn.execute(text("ALTER TABLE etl_runs DROP COLUMN interval_start"))
        conn.execute(text("ALTER TABLE etl_runs DROP COLUMN interval_end"))
        conn.execute(
            text(
                "CREATE UNIQUE INDEX uq_etl_runs_scheduled_date ON etl_runs (pipeline, "
                "logical_date) WHERE trigger = 'schedule'"
            )
        )
        conn.execute(text("DROP TABLE etl_watermarks"))  # a timestamp cursor's only
        conn.execute(
            text(
                "CREATE TABLE etl_watermarks (pipeline VARCHAR(63) PRIMARY KEY, cursor_column "
                "VARCHAR(200) NOT NULL, value DATETIME NOT NULL, run_id VARCHAR(36) NOT NULL, "
                "updated_at DATETIME NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO etl_watermarks VALUES ('events_incremental', 'updated_at', "
                "'2026-05-01 10:00:00.000000', :run, '2026-05-01 10:00:00.000000')"
            ),
            {"run": scheduled},
        )
        conn.execute(delete(schema_version_table).where(schema_version_table.c.version > 6))

    assert upgrade(sqlite_engine) == SCHEMA_VERSION

    run = ledger.get_run(scheduled)
    assert (run.interval.start, run.interval.end) == (
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 2, tzinfo=UTC),
    )
    assert ledger.watermark("events_incremental") == datetime(2026, 5, 1, 10, tzinfo=UTC)
    columns = {c["name"]: c for c in inspect(sqlite_engine).get_columns("etl_watermarks")}
    assert "position" in columns and columns["value"]["nullable"]
    indexes = {index["name"] for index in inspect(sqlite_engine).get_indexes("etl_runs")}
    assert "uq_etl_runs_scheduled_interval" in indexes
    assert "uq_etl_runs_scheduled_date" not in indexes
    # Two hours of one date are two scheduled runs now.
    hours = Grain(GrainKind.HOUR).on_dates(date(2026, 5, 3), date(2026, 5, 3))[:2]
    created = [
        ledger.create_run(
            pipeline="events_hourly",
            interval=hour,
            logical_date=date(2026, 5, 3),
            trigger=Trigger.SCHEDULE,
            params={},
        )[1]
        for hour in hours
    ]
    assert created == [True, True]


def test_a_sub_daily_run_is_written_under_its_utc_hour_and_read_back_from_it() -> None:
    interval = Grain(GrainKind.HOUR, "Europe/Berlin").parse("2026-10-25T02:00:00+01:00")
    partition = partition_path(EVENTS_HOURLY.grain, interval)
    # The second 02:00 of the night, CET: its UTC hour is 01, unlike the first (00).
    assert partition == "dt=2026-10-25/hour=01"
    key = run_prefix("etl", "events_hourly", partition, "r-1") + "/part-00000.jsonl.gz"
    parsed = parse_run_object_key("etl/events_hourly", key)
    assert parsed is not None
    assert (parsed.partition, parsed.run_id, parsed.name) == (
        "dt=2026-10-25/hour=01",
        "r-1",
        "part-00000.jsonl.gz",
    )
    every_90s = Grain(GrainKind.SECONDS, seconds=90)
    assert (
        partition_path(every_90s, every_90s.containing(datetime(2026, 1, 1, 0, 1, 40, tzinfo=UTC)))
        == "dt=2026-01-01/hour=00/minute=01/second=30"
    )
    daily = EVENTS_DAILY.grain
    assert partition_path(daily, daily.of_date(date(2026, 10, 25))) == "dt=2026-10-25"


def test_a_param_sent_through_the_api_to_a_query_source_is_bound_never_spliced(
    services: Services,
) -> None:
    rows = [
        (1, datetime(2026, 11, 22, 9, tzinfo=UTC), "eu"),
        (2, datetime(2026, 11, 22, 10, tzinfo=UTC), "us"),
    ]
    seed_events(services.source_engine, rows)
    client = api_app(services.ledger, RecordingEnqueue()).test_client()

    def run_for(region: str) -> list[int]:
        answer = client.post(
            "/api/v1/runs",
            json={
                "pipeline": "events_by_region",
                "interval": "2026-11-22",
                "params": {"region": region},
            },
            headers=auth(),
        )
        assert answer.status_code == 202, answer.json
        run_id = answer.json["id"]
        for chunk in steps.plan_run(services, run_id) or []:
            steps.transform_chunk(services, run_id, chunk.index)
        run = steps.commit_run(services, run_id)
        assert run.state is RunState.SUCCEEDED, run.reason
        return [
            r["id"]
            for c in services.ledger.get_chunks(run_id)
            for r in read_json_lines_gzip(services.parts.get_bytes(c.s3_key or ""))
        ]

    assert run_for("eu") == [1]
    assert run_for("eu' OR '1'='1") == []
    assert run_for("eu'; DROP TABLE etl_test_interval_events; --") == []
    with services.source_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM etl_test_interval_events")).scalar_one() == 2
