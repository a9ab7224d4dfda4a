"""Backfills and admission: one run per date, at most N active, waiting runs started as
places free up, already-succeeded dates skipped unless asked (SQLite ledger, moto S3)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from etl.adapters.ledger import Ledger
from etl.bootstrap import Services
from etl.cli import main
from etl.cli.backfill import progress_text
from etl.cli.progress import ProgressLine
from etl.domain.backfills import BackfillProgress, Reprocess, plan_backfill
from etl.domain.errors import BackfillConflict
from etl.domain.intervals import MAX_INTERVALS, Grain
from etl.domain.runs import Run, RunState, Trigger
from etl.pipelines import PIPELINES, get_pipeline
from etl.service import execution as steps
from etl.service.backfills import cancel_backfill, start_backfill
from etl.service.lifecycle import EnqueueFailed, RunService

from builders import auth, utc_day, with_orders
from fakes import RecordingEnqueue

D1 = date(2026, 10, 1)


def days(n: int) -> list[date]:
    return [D1 + timedelta(days=i) for i in range(n)]


@pytest.fixture
def seeded(services: Services) -> Services:
    return with_orders(services, 300)


@pytest.fixture
def one_at_a_time() -> Iterator[str]:
    """orders_daily as a pipeline that allows one active run."""
    name = "orders_one_at_a_time"
    PIPELINES[name] = replace(get_pipeline("orders_daily"), name=name, max_active_runs=1)
    yield name
    del PIPELINES[name]


def finish(services: Services, run_id: str) -> Run:
    """Plan (already admitted), transform and commit a run in this process."""
    pending = steps.plan_run(services, run_id)
    assert pending is not None
    for chunk in pending:
        steps.transform_chunk(services, run_id, chunk.index)
    return steps.commit_run(services, run_id)


# -- the pure part ---------------------------------------------------------------------


UTC_DAYS = Grain()


def run_in(state: RunState, day: date) -> Run:
    moment = datetime(2026, 10, 1, tzinfo=UTC)
    return Run(
        id=f"run-{day}",
        pipeline="p",
        logical_date=day,
        interval=UTC_DAYS.of_date(day),
        trigger=Trigger.MANUAL,
        state=state,
        params={},
        idempotency_key=None,
        created_at=moment,
        updated_at=moment,
    )


@pytest.mark.parametrize(
    ("reprocess", "runs"),
    [
        (Reprocess.NONE, [True, False, False, False, False]),
        (Reprocess.FAILED, [True, False, True, True, False]),
        (Reprocess.ALL, [True, True, True, True, False]),
    ],
)
def test_a_backfill_plan_decides_per_date_by_its_latest_run(
    reprocess: Reprocess, runs: list[bool]
) -> None:
    dates = days(5)
    latest = {
        run.interval.start: run
        for run in (
            run_in(RunState.SUCCEEDED, dates[1]),
            run_in(RunState.FAILED, dates[2]),
            run_in(RunState.CANCELLED, dates[3]),
            run_in(RunState.RUNNING, dates[4]),  # never two active runs of a date
        )
    }
    named = [(UTC_DAYS.of_date(day), day, day.isoformat()) for day in dates]
    plans = plan_backfill(named, latest, reprocess)
    assert [p.run for p in plans] == runs
    assert plans[0].reason == "no run yet"
    assert "still active" in plans[4].reason and plans[4].existing_run_id == "run-2026-10-05"


def test_a_backfill_range_must_be_forward_and_bounded() -> None:
    assert UTC_DAYS.in_range(D1, D1) == [UTC_DAYS.of_date(D1)]
    with pytest.raises(ValueError, match="is before start"):
        UTC_DAYS.in_range(D1, D1 - timedelta(days=1))
    with pytest.raises(ValueError, match=f"more than {MAX_INTERVALS} intervals"):
        UTC_DAYS.in_range(D1, D1 + timedelta(days=MAX_INTERVALS))
    with pytest.raises(ValueError, match="two dates or two timestamps"):
        UTC_DAYS.in_range(D1, datetime(2026, 10, 2, tzinfo=UTC))


def test_progress_counts_runs_and_estimates_the_rest() -> None:
    runs = [run_in(RunState.SUCCEEDED, d) for d in days(2)] + [
        run_in(RunState.RUNNING, D1),
        run_in(RunState.QUEUED, D1),
    ]
    text = progress_text(BackfillProgress.of(runs), elapsed_s=60)
    assert text == (
        "[........................] 0/0 chunks | 2/4 runs ended (2 succeeded) | 1 active | "
        "1 queued | 0 rows | 1:00 | ETA 1:00"
    )


def test_progress_shows_chunks_done_of_the_planned_ones_and_rows_per_second() -> None:
    succeeded = [
        dataclasses.replace(run_in(RunState.SUCCEEDED, d), chunk_count=4, rows_written=3_000)
        for d in days(2)
    ]
    running = dataclasses.replace(run_in(RunState.RUNNING, D1), id="active", chunk_count=4)
    queued = run_in(RunState.QUEUED, D1)  # not planned yet: no chunks to count

    progress = BackfillProgress.of([*succeeded, running, queued], chunks_done={"active": 2})
    text = progress_text(progress, elapsed_s=60)

    assert (progress.chunks_done, progress.chunks_planned) == (10, 12)
    assert text == (
        "[####################....] 10/12 chunks | 2/4 runs ended (2 succeeded) | 1 active | "
        "1 queued | 6,000 rows | 100 rows/s | 1:00 | ETA 1:00"
    )


def test_progress_prints_a_line_per_change_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    line = ProgressLine(sys.stdout)
    for text in ("0/2 runs ended | 1 active | 1 queued | 0 rows | 0:01",
                 "0/2 runs ended | 1 active | 1 queued | 0 rows | 0:02",
                 "1/2 runs ended | 1 active | 0 queued | 5 rows | 0:03"):  # fmt: skip
        line.show(text, " | ".join(text.split(" | ")[:4]))
    line.finish()
    assert capsys.readouterr().out.splitlines() == [
        "0/2 runs ended | 1 active | 1 queued | 0 rows | 0:01",
        "1/2 runs ended | 1 active | 0 queued | 5 rows | 0:03",
    ]


# -- the service ---------------------------------------------------------------------


def test_a_backfill_records_one_run_per_date_and_sends_only_max_active(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    service = RunService(ledger, enqueue)

    backfill, plans = start_backfill(
        service, "orders_daily", start=D1, end=D1 + timedelta(days=4), max_active=2
    )

    assert backfill is not None and backfill.max_active == 2
    runs = ledger.backfill_runs(backfill.id)
    assert [r.logical_date for r in runs] == days(5)
    assert {(r.trigger, r.state) for r in runs} == {(Trigger.BACKFILL, RunState.QUEUED)}
    # the two oldest dates are sent; the rest wait for a place
    assert enqueue.calls == [("etl.plan_run", [runs[0].id]), ("etl.plan_run", [runs[1].id])]
    assert all(p.run for p in plans)


def test_a_dry_run_starts_nothing(ledger: Ledger, enqueue: RecordingEnqueue) -> None:
    backfill, plans = start_backfill(
        RunService(ledger, enqueue),
        "orders_daily",
        start=D1,
        end=D1 + timedelta(days=2),
        max_active=1,
        dry_run=True,
    )
    assert backfill is None and len(plans) == 3 and all(p.run for p in plans)
    assert ledger.list_runs() == [] and enqueue.calls == []


def test_bad_backfills_are_refused_before_anything_is_recorded(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    service = RunService(ledger, enqueue)
    with pytest.raises(ValueError, match="before start"):
        start_backfill(service, "orders_daily", start=D1, end=D1 - timedelta(1), max_active=1)
    with pytest.raises(ValueError, match="max_active"):
        start_backfill(service, "orders_daily", start=D1, end=D1, max_active=0)
    with pytest.raises(Exception, match="chunk_size"):
        start_backfill(
            service, "orders_daily", start=D1, end=D1, max_active=1, params={"chunk_size": 0}
        )
    assert ledger.list_runs() == [] and enqueue.calls == []


def test_a_refused_publish_fails_the_backfills_runs(
    ledger: Ledger, enqueue: RecordingEnqueue
) -> None:
    enqueue.error = ConnectionError("broker down")
    with pytest.raises(EnqueueFailed, match="broker down"):
        start_backfill(
            RunService(ledger, enqueue),
            "orders_daily",
            start=D1,
            end=D1 + timedelta(days=1),
            max_active=1,
        )
    assert {r.state for r in ledger.list_runs()} == {RunState.FAILED}


def test_runs_wait_for_a_place_and_start_as_places_free_up(
    seeded: Services, enqueue: RecordingEnqueue
) -> None:
    ledger = seeded.ledger
    backfill, _ = start_backfill(
        RunService(ledger, enqueue),
        "orders_daily",
        start=D1,
        end=D1 + timedelta(days=2),
        max_active=1,
    )
    assert backfill is not None
    first, second, third = ledger.backfill_runs(backfill.id)
    assert enqueue.calls == [("etl.plan_run", [first.id])]

    assert steps.plan_run(seeded, first.id) is not None
    # a plan message for a run without a place leaves it queued
    assert steps.plan_run(seeded, second.id) is None
    assert ledger.get_run(second.id).state is RunState.QUEUED

    assert finish(seeded, first.id).state is RunState.SUCCEEDED
    assert RunService(ledger, enqueue).admit_waiting("orders_daily") == [second.id]
    assert steps.plan_run(seeded, second.id) is not None
    assert ledger.get_run(second.id).state is RunState.RUNNING
    assert ledger.runs_to_admit("orders_daily", None) == []  # the third still waits
    assert ledger.get_run(third.id).state is RunState.QUEUED


def test_max_active_runs_keeps_a_pipelines_runs_from_overlapping(
    seeded: Services, enqueue: RecordingEnqueue, one_at_a_time: str
) -> None:
    service = RunService(seeded.ledger, enqueue)
    first, _ = service.start_run(one_at_a_time, interval=D1)
    second, _ = service.start_run(one_at_a_time, interval=D1 + timedelta(days=1))

    assert steps.plan_run(seeded, first.id) is not None
    assert steps.plan_run(seeded, second.id) is None  # waits: one run at a time
    assert seeded.ledger.get_run(second.id).state is RunState.QUEUED

    service.cancel_run(first.id)  # ending the first sends the second its plan
    assert enqueue.calls[-1] == ("etl.plan_run", [second.id])
    assert finish(seeded, second.id).state is RunState.SUCCEEDED


def test_a_second_backfill_skips_succeeded_dates_unless_asked(
    seeded: Services, enqueue: RecordingEnqueue
) -> None:
    service = RunService(seeded.ledger, enqueue)
    backfill, _ = start_backfill(service, "orders_daily", start=D1, end=D1, max_active=1)
    assert backfill is not None
    [run] = seeded.ledger.backfill_runs(backfill.id)
    assert finish(seeded, run.id).state is RunState.SUCCEEDED

    again, plans = start_backfill(
        service, "orders_daily", start=D1, end=D1 + timedelta(days=1), max_active=1
    )
    assert again is not None
    assert [(p.run, p.reason.split(":")[0]) for p in plans] == [
        (False, "skipped"),
        (True, "no run yet"),
    ]
    redo, plans = start_backfill(
        service, "orders_daily", start=D1, end=D1, max_active=1, reprocess=Reprocess.ALL
    )
    assert redo is not None and plans[0].run


# -- the CLI and the API ---------------------------------------------------------------


def test_etl_backfill_dry_run_prints_the_plan(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", "sqlite:///" + str(tmp_path / "ledger.db"))
    monkeypatch.setenv("ETL_BROKER_URL", "amqp://guest:guest@127.0.0.1:1//")

    argv = ["backfill", "orders_daily", "--start", "2026-10-01", "--end", "2026-10-03"]
    assert main([*argv, "--dry-run"]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == [f"  2026-10-0{d}  would run  no run yet" for d in (1, 2, 3)]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--start", "2026-10-03", "--end", "2026-10-01"], "before start"),
        (["--start", "2026-10-01", "--end", "2026-13-01"], "2026-13-01"),
        (["--start", "2026-10-01", "--end", "2026-10-02", "--max-active", "0"], "--max-active"),
        (["--start", "2026-10-01", "--end", "2026-10-02", "--reprocess", "some"], "some"),
        (["--start", "2026-10-01"], "--end"),
    ],
)
def test_etl_backfill_usage_errors_exit_2(
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    named: str,
) -> None:
    monkeypatch.setenv("ETL_DATABASE_URL", "sqlite:///" + str(tmp_path / "ledger.db"))
    assert main(["backfill", "orders_daily", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.splitlines()) == 1


AUTH = auth()


def test_the_api_starts_a_backfill_and_reports_its_progress(
    client: FlaskClient, enqueue: RecordingEnqueue
) -> None:
    body = {"pipeline": "orders_daily", "start": "2026-10-01", "end": "2026-10-03", "max_active": 2}
    created = client.post("/api/v1/backfills", json=body, headers=AUTH)

    assert created.status_code == 202, created.json
    backfill = created.json["backfill"]
    assert created.headers["Location"] == f"/api/v1/backfills/{backfill['id']}"
    assert [d["logical_date"] for d in created.json["dates"]] == [
        "2026-10-01", "2026-10-02", "2026-10-03"
    ]  # fmt: skip
    assert len(enqueue.calls) == 2

    shown = client.get(f"/api/v1/backfills/{backfill['id']}", headers=AUTH)
    assert shown.status_code == 200
    assert shown.json["progress"] == {
        "total": 3, "ended": 0, "by_state": {"queued": 3}, "rows_written": 0,
        "done": False, "succeeded": False,
    }  # fmt: skip
    assert client.get("/api/v1/backfills/nope", headers=AUTH).status_code == 404
    assert client.get(f"/api/v1/backfills/{backfill['id']}").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pipeline": "nope", "start": "2026-10-01", "end": "2026-10-02"}, "pipeline"),
        ({"pipeline": "orders_daily", "start": "2026-10-02", "end": "2026-10-01"}, "end"),
        ({"pipeline": "orders_daily", "start": "20261001", "end": "2026-10-01"}, "start"),
        (
            {
                "pipeline": "orders_daily",
                "start": "2026-10-01",
                "end": "2026-10-01",
                "max_active": True,
            },
            "max_active",
        ),
        (
            {
                "pipeline": "orders_daily",
                "start": "2026-10-01",
                "end": "2026-10-01",
                "reprocess": "some",
            },
            "reprocess",
        ),
        (
            {"pipeline": "orders_daily", "start": "2026-10-01", "end": "2026-10-01", "extra": 1},
            "extra",
        ),
        (
            {
                "pipeline": "orders_daily",
                "start": "2026-10-01",
                "end": "2026-10-01",
                "params": {"chunk_size": "x"},
            },
            "params.chunk_size",
        ),
        *(
            ({"pipeline": "orders_daily", "start": "2026-10-01", "end": "2026-10-01", **bad}, name)
            for bad, name in [
                ({"max_active": "2"}, "max_active"),
                ({"max_active": 2.0}, "max_active"),
                ({"dry_run": "yes"}, "dry_run"),
                ({"dry_run": 1}, "dry_run"),
            ]
        ),
    ],
)
def test_a_bad_backfill_request_is_a_400_naming_the_field_and_starts_nothing(
    client: FlaskClient, enqueue: RecordingEnqueue, ledger: Ledger, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/backfills", json=body, headers=AUTH)
    assert response.status_code == 400, response.json
    assert field in [d["field"] for d in response.json["details"]]
    assert enqueue.calls == [] and ledger.list_runs() == []


def test_cancelling_a_backfill_cancels_its_unfinished_runs_only(
    seeded: Services, enqueue: RecordingEnqueue, client: FlaskClient
) -> None:
    service = RunService(seeded.ledger, enqueue)
    backfill, _ = start_backfill(
        service, "orders_daily", start=D1, end=D1 + timedelta(days=2), max_active=1
    )
    assert backfill is not None
    first = seeded.ledger.backfill_runs(backfill.id)[0]
    assert finish(seeded, first.id).state is RunState.SUCCEEDED

    runs = cancel_backfill(service, backfill.id)

    assert [r.state for r in runs] == [RunState.SUCCEEDED, RunState.CANCELLED, RunState.CANCELLED]
    assert runs[1].reason == "backfill cancelled"


def test_the_api_cancels_a_backfill(client: FlaskClient) -> None:
    body = {"pipeline": "orders_daily", "start": "2026-10-01", "end": "2026-10-02"}
    backfill_id = client.post("/api/v1/backfills", json=body, headers=AUTH).json["backfill"]["id"]

    cancelled = client.post(f"/api/v1/backfills/{backfill_id}/cancel", headers=AUTH)

    assert cancelled.status_code == 200
    assert cancelled.json["progress"]["by_state"] == {"cancelled": 2}
    assert client.post("/api/v1/backfills/nope/cancel", headers=AUTH).status_code == 404


def test_etl_cancel_backfill_and_runs_backfill(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "sqlite:///" + str(tmp_path / "ledger.db")
    monkeypatch.setenv("ETL_DATABASE_URL", url)
    from etl.adapters.db import make_engine
    from etl.adapters.ledger import upgrade

    engine = make_engine(url)
    upgrade(engine)
    backfill, _ = Ledger(engine).create_backfill(
        pipeline="orders_daily", start=D1, end=D1, max_active=1, reprocess="none",
        params={}, intervals=[(utc_day(D1), D1, D1.isoformat())],
    )  # fmt: skip
    engine.dispose()

    assert main(["cancel", "--backfill", backfill.id]) == 0
    assert "2026-10-01 cancelled" in capsys.readouterr().out
    assert main(["runs", "--backfill", backfill.id]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert main(["cancel", "--backfill", "nope"]) == 1
    assert "no backfill with id 'nope'" in capsys.readouterr().err


def test_a_retried_run_waits_for_a_place_like_any_other_and_keeps_its_plan(
    seeded: Services, enqueue: RecordingEnqueue, one_at_a_time: str
) -> None:
    service = RunService(seeded.ledger, enqueue)
    failed, _ = service.start_run(one_at_a_time, interval=D1)
    planned = steps.plan_run(seeded, failed.id)
    assert planned
    steps.transform_chunk(seeded, failed.id, planned[0].index)
    seeded.ledger.fail_run(failed.id, "chunk 1 failed: boom")
    other, _ = service.start_run(one_at_a_time, interval=D1 + timedelta(days=1))
    assert steps.plan_run(seeded, other.id) is not None  # the other run now holds the place

    service.retry_run(failed.id)
    assert steps.plan_run(seeded, failed.id) is None  # waits: one run at a time
    assert seeded.ledger.get_run(failed.id).state is RunState.QUEUED
    assert seeded.ledger.runs_to_admit(one_at_a_time, 1) == []

    assert finish(seeded, other.id).state is RunState.SUCCEEDED
    assert seeded.ledger.runs_to_admit(one_at_a_time, 1) == [failed.id]  # its place is free
    resumed = steps.plan_run(seeded, failed.id)
    # The same plan, less the chunk done before the failure.
    assert resumed is not None
    assert [c.index for c in resumed] == [c.index for c in planned[1:]]
    assert finish(seeded, failed.id).state is RunState.SUCCEEDED


def test_cancelling_a_backfill_sends_a_run_that_waited_behind_it_its_plan(
    seeded: Services, enqueue: RecordingEnqueue, one_at_a_time: str
) -> None:
    service = RunService(seeded.ledger, enqueue)
    backfill, _ = start_backfill(service, one_at_a_time, start=D1, end=D1, max_active=1)
    assert backfill is not None
    [backfilled] = seeded.ledger.backfill_runs(backfill.id)
    assert steps.plan_run(seeded, backfilled.id) is not None  # holds the pipeline's place
    waiting, _ = service.start_run(one_at_a_time, interval=D1 + timedelta(days=5))
    assert steps.plan_run(seeded, waiting.id) is None
    enqueue.calls.clear()

    cancel_backfill(service, backfill.id)

    assert enqueue.calls == [("etl.plan_run", [waiting.id])]
    assert steps.plan_run(seeded, waiting.id) is not None  # and now it has the place


def test_two_backfills_planned_at_once_cannot_both_start_a_date(
    seeded: Services, enqueue: RecordingEnqueue
) -> None:
    service = RunService(seeded.ledger, enqueue)
    # The second backfill decided on the ledger as it was before the first one started.
    day = utc_day(D1)
    stale = {
        moment: run.id
        for moment, run in seeded.ledger.latest_runs_by_interval(
            "orders_daily", day.start, day.start
        ).items()
    }
    first, _ = start_backfill(service, "orders_daily", start=D1, end=D1, max_active=1)
    assert first is not None

    with pytest.raises(
        BackfillConflict,
        match=re.escape(f"orders_daily for intervals starting {day.start.isoformat()}"),
    ):
        seeded.ledger.create_backfill(
            pipeline="orders_daily",
            start=D1,
            end=D1,
            max_active=1,
            reprocess=Reprocess.NONE.value,
            params={},
            intervals=[(day, D1, D1.isoformat())],
            planned_on=stale,
            covering=(day.start, day.start),
        )
    assert [run.backfill_id for run in seeded.ledger.list_runs()] == [first.id]
