"""`etl preview` and runs that explain themselves, on the SQLite ledger and source: a
pipeline tried on a few rows of an interval writes nothing, a transform's bug shows before
a run, and a run that read nothing says why."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from interval_pipelines import EVENTS_DAILY, seed_events

from etl.adapters.db import SqlSource
from etl.bootstrap import Services
from etl.cli import main
from etl.domain.runs import RunState
from etl.domain.transform import BatchResult, Row
from etl.pipelines import PIPELINES, get_pipeline
from etl.service import execution as steps
from etl.service.lifecycle import RunService
from etl.service.preview import TransformRaised, preview

from builders import utc_day, with_orders
from fakes import RecordingEnqueue

DAY = date(2026, 11, 22)


@pytest.fixture(autouse=True)
def events_daily() -> Iterator[None]:
    PIPELINES[EVENTS_DAILY.name] = EVENTS_DAILY
    yield
    del PIPELINES[EVENTS_DAILY.name]


@pytest.fixture
def events(services: Services) -> Services:
    """Events every 6 hours from the day before DAY to the day after (12 rows)."""
    start = datetime(2026, 11, 21, tzinfo=UTC)
    seed_events(
        services.source_engine,
        ((i + 1, start + timedelta(hours=6 * i), "eu") for i in range(12)),
    )
    return services


def test_a_preview_reads_the_first_rows_of_the_interval_and_writes_nothing(
    events: Services,
) -> None:
    shown = preview(
        EVENTS_DAILY,
        SqlSource(events.source_engine, EVENTS_DAILY.source),
        interval=utc_day(DAY),
        params={},
        limit=3,
    )

    assert shown.rows_in_scope == 4  # the day's four events
    assert [record["id"] for record in shown.records] == [5, 6, 7]
    assert shown.rejections == []
    assert events.ledger.list_runs() == []


def test_a_transform_that_raises_is_shown_naming_the_pipeline_and_the_error(
    services: Services,
) -> None:
    def broken(rows: Sequence[Row]) -> BatchResult:
        return BatchResult(records=[{"ratio": row["id"] / 0} for row in rows])

    with_orders(services, 20)
    pipeline = replace(get_pipeline("orders_daily"), transform=broken)

    with pytest.raises(TransformRaised, match="orders_daily's transform raised ZeroDivisionError"):
        preview(
            pipeline,
            SqlSource(services.source_engine, pipeline.source),
            interval=utc_day(DAY),
            params={},
            limit=5,
        )


def test_etl_preview_prints_the_records_and_rejections_or_one_json_document(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with_orders(services, 200)
    monkeypatch.setenv("ETL_DATABASE_URL", str(services.ledger.engine.url))

    assert main(["preview", "orders_daily", "--interval", "2026-11-22", "--limit", "50"]) == 0
    out = capsys.readouterr().out
    assert "pipeline  orders_daily, interval 2026-11-22" in out
    assert "rows      50 read of 200 a run would read now" in out
    assert out.splitlines()[3].split()[:2] == ["order_id", "customer_email"]

    assert main(["preview", "orders_daily", "--limit", "50", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["rows_read"] == 50
    assert len(document["records"]) + len(document["rejections"]) == 50
    assert {"key", "reason"} <= set(document["rejections"][0])
    assert services.ledger.list_runs() == []


def test_etl_preview_refuses_an_interval_the_pipeline_does_not_have(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", str(services.ledger.engine.url))

    assert main(["preview", "orders_daily", "--interval", "2026-11-22T14:30:00Z"]) == 2
    assert "does not start an interval" in capsys.readouterr().err


def test_a_run_that_read_nothing_says_why_in_etl_status(
    events: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = RunService(events.ledger, RecordingEnqueue()).start_run(
        "events_daily", interval=date(2026, 12, 25)
    )
    assert steps.plan_run(events, run.id) == []
    assert steps.commit_run(events, run.id).state is RunState.SUCCEEDED
    monkeypatch.setenv("ETL_DATABASE_URL", str(events.ledger.engine.url))

    assert main(["status", run.id]) == 0

    out = capsys.readouterr().out
    assert "reads     rows with 2026-12-24T23:00:00+00:00 <= event_at < " in out
    assert (
        "read      nothing: no row had event_at in [2026-12-24T23:00:00+00:00, "
        "2026-12-25T23:00:00+00:00)"
    ) in out
