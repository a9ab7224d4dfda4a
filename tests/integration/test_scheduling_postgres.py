"""Scheduling on the real PostgreSQL: the leader lock, Beat's compare-and-set state,
admission under concurrency, and incremental windows with a late-committing row."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from scheduling_pipelines import EVENTS_BY_SEQUENCE, EVENTS_INCREMENTAL, EVENTS_TABLE
from sqlalchemy import text

from etl.adapters.db import replace_table
from etl.adapters.ledger.beat import BeatState, LeaderLock
from etl.bootstrap import Services
from etl.domain.errors import BackfillConflict
from etl.domain.runs import RunState, Trigger
from etl.pipelines import PIPELINES
from etl.service import execution as steps
from etl.service.lifecycle import RunService

from builders import beat_ticks, read_json_lines_gzip, utc_day
from fakes import RecordingEnqueue
from support import wait_until


@pytest.fixture
def events_pipeline(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(PIPELINES, EVENTS_INCREMENTAL.name, EVENTS_INCREMENTAL)
    monkeypatch.setitem(PIPELINES, EVENTS_BY_SEQUENCE.name, EVENTS_BY_SEQUENCE)
    return EVENTS_INCREMENTAL.name


@pytest.fixture
def leader_locks(services: Services) -> Iterator[tuple[LeaderLock, LeaderLock]]:
    """Two Beats' leader locks on the session's database, released at the end."""
    locks = LeaderLock(services.settings.database_url), LeaderLock(services.settings.database_url)
    yield locks
    for lock in locks:
        lock.release()


def leader_backends(services: Services, column: str) -> list[object]:
    """``column`` of each backend a leader lock holds in this session's database."""
    query = (
        f"SELECT {column} FROM pg_stat_activity "
        "WHERE application_name = 'nightly-etl-beat-leader' AND datname = current_database()"
    )
    with services.ledger.engine.begin() as conn:
        return list(conn.execute(text(query)).scalars().all())


def test_one_process_holds_the_leader_lock_and_another_takes_over_when_it_goes(
    leader_locks: tuple[LeaderLock, LeaderLock],
) -> None:
    first, second = leader_locks
    assert first.hold() and first.hold()  # kept while held
    assert not second.hold()
    first.release()
    assert second.hold()
    assert not first.hold()


def test_a_leader_holds_no_transaction_open_between_its_checks(
    services: Services, leader_locks: tuple[LeaderLock, LeaderLock]
) -> None:
    # Idle in a transaction, it would pin the oldest snapshot (vacuum stalls behind it)
    # and be cut off by an idle_in_transaction_session_timeout.
    lock, _ = leader_locks
    assert lock.hold() and lock.hold()  # took the lead, then checked it
    assert leader_backends(services, "state") == ["idle"]


def test_a_leader_whose_connection_is_killed_loses_the_lead_to_the_other(
    services: Services, leader_locks: tuple[LeaderLock, LeaderLock]
) -> None:
    first, second = leader_locks
    assert first.hold()
    assert leader_backends(services, "pg_terminate_backend(pid)") == [True]
    assert second.hold()  # the server released the lock with the connection
    assert not first.hold()  # and the old leader notices it is no longer leading


def test_only_one_of_two_beats_advancing_the_same_entry_sends(services: Services) -> None:
    state = BeatState(services.ledger.engine)
    entry = f"test:{datetime.now(UTC).timestamp()}"
    start = datetime(2026, 5, 1, tzinfo=UTC)
    state.start_entry(entry, start)
    slot = start + timedelta(minutes=1)
    sent: list[str] = []

    def advance(holder: str) -> list[datetime]:
        return state.advance(
            entry,
            expected_last=start,
            new_last=slot,
            dispatch=[(slot, date(2026, 4, 30), False)],
            holder=holder,
            send=lambda s, d: sent.append(holder),
        )

    assert advance("beat-a") == [slot]
    assert advance("beat-b") == []
    assert sent == ["beat-a"]
    [tick] = beat_ticks(state.engine, entry)
    assert (tick.dispatched_by, tick.logical_date) == ("beat-a", date(2026, 4, 30))


def test_concurrent_plan_tasks_admit_only_max_active_runs(services: Services) -> None:
    ledger = services.ledger
    backfill, runs = ledger.create_backfill(
        pipeline="orders_daily",
        start=date(2025, 1, 1),
        end=date(2025, 1, 8),
        max_active=2,
        reprocess="none",
        params={},
        intervals=[
            (utc_day(day), day, day.isoformat()) for day in (date(2025, 1, d) for d in range(1, 9))
        ],
    )
    admitted: list[str] = []
    barrier = threading.Barrier(len(runs))

    def admit(run_id: str) -> None:
        barrier.wait()
        if ledger.admit_run(run_id, None):
            admitted.append(run_id)

    threads = [threading.Thread(target=admit, args=(run.id,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(admitted) == 2
    states = [run.state for run in ledger.backfill_runs(backfill.id)]
    assert states.count(RunState.PLANNING) == 2 and states.count(RunState.QUEUED) == 6
    for run in runs:  # leave nothing active for the other tests
        ledger.fail_run(run.id, "test over")


# -- incremental windows ---------------------------------------------------------------


@pytest.fixture
def events(services: Services, events_pipeline: str) -> Iterator[Services]:
    replace_table(services.source_engine, EVENTS_TABLE, [])
    with services.ledger.engine.begin() as conn:  # each test starts with no watermark
        conn.execute(
            text(
                "DELETE FROM etl_watermarks "
                "WHERE pipeline IN ('events_incremental', 'events_by_sequence')"
            )
        )
    yield services
    EVENTS_TABLE.drop(services.source_engine, checkfirst=True)


def insert_events(services: Services, ids: range, age_s: float) -> None:
    """Rows whose cursor is ``age_s`` seconds before the database's clock (a row that a
    transaction stamped earlier and commits only now)."""
    with services.source_engine.begin() as conn:
        for event_id in ids:
            conn.execute(
                text(
                    "INSERT INTO etl_test_events (id, updated_at, payload) "
                    "VALUES (:id, now() - make_interval(secs => :age), :payload)"
                ),
                {"id": event_id, "age": age_s, "payload": f"event {event_id}"},
            )


def run_once(
    services: Services, day: date, pipeline: str = "events_incremental"
) -> tuple[str, list[int]]:
    run, _ = RunService(services.ledger, RecordingEnqueue()).start_run(
        pipeline, interval=day, trigger=Trigger.MANUAL
    )
    pending = steps.plan_run(services, run.id)
    assert pending is not None
    for chunk in pending:
        steps.transform_chunk(services, run.id, chunk.index)
    committed = steps.commit_run(services, run.id)
    assert committed.state is RunState.SUCCEEDED, committed.reason
    return run.id, read_ids(services, run.id)


def read_ids(services: Services, run_id: str) -> list[int]:
    ids = []
    for chunk in services.ledger.get_chunks(run_id):
        assert chunk.s3_key is not None
        ids += [row["id"] for row in read_json_lines_gzip(services.parts.get_bytes(chunk.s3_key))]
    return ids


def db_now(services: Services) -> datetime:
    with services.source_engine.connect() as conn:
        moment: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return moment


def test_incremental_runs_read_each_row_once_including_one_committed_late(
    events: Services,
) -> None:
    services = events
    insert_events(services, range(1, 11), age_s=60)  # committed long ago
    insert_events(services, range(11, 13), age_s=1)  # stamped 1 s ago: inside the 2 s lag

    first_id, first = run_once(services, date(2026, 5, 1))

    assert sorted(first) == list(range(1, 11))  # the late rows wait for the next window
    first_window = services.ledger.get_run(first_id).window
    window = first_window.cursor if first_window else None
    assert window is not None and window.low is None
    assert services.ledger.watermark("events_incremental") == window.high

    insert_events(services, range(13, 15), age_s=0)
    # the next window ends 2 s before its planning: wait until it covers rows 11 to 14
    newest = db_now(services)
    wait_until(lambda: db_now(services) - timedelta(seconds=2) > newest, timeout_s=10,
               what="the lag to pass the newest row")  # fmt: skip
    second_id, second = run_once(services, date(2026, 5, 2))

    assert sorted(second) == list(range(11, 15))
    assert not set(first) & set(second)
    second_run = services.ledger.get_run(second_id)
    second_window = second_run.window.cursor if second_run.window else None
    assert second_window is not None and second_window.low == window.high
    manifest = services.parts.get_bytes(services.ledger.get_run(second_id).manifest_key or "")
    assert (
        b'"cursor_column": "updated_at"' in manifest or b'"cursor_column":"updated_at"' in manifest
    )


def test_an_integer_cursor_reads_each_row_once_up_to_the_largest_value_when_planned(
    events: Services,
) -> None:
    services = events
    _, nothing = run_once(services, date(2026, 6, 1), "events_by_sequence")
    assert nothing == []  # an empty source: an empty window, and no watermark yet
    assert services.ledger.watermark("events_by_sequence") is None

    insert_events(services, range(1, 101), age_s=0)
    first_id, first = run_once(services, date(2026, 6, 2), "events_by_sequence")
    insert_events(services, range(101, 151), age_s=0)
    second_id, second = run_once(services, date(2026, 6, 3), "events_by_sequence")
    _, third = run_once(services, date(2026, 6, 4), "events_by_sequence")

    assert sorted(first) == list(range(1, 101))
    assert sorted(second) == list(range(101, 151))
    assert third == []
    assert services.ledger.watermark("events_by_sequence") == 150
    windows = [services.ledger.get_run(run_id).window for run_id in (first_id, second_id)]
    cursors = [window.cursor for window in windows if window is not None]
    assert [(c.low, c.high) for c in cursors] == [(None, 100), (100, 150)]
    manifest = services.parts.get_bytes(services.ledger.get_run(second_id).manifest_key or "")
    assert b'"cursor_low": 100' in manifest and b'"cursor_high": 150' in manifest


def test_an_incremental_window_is_fixed_when_planned(events: Services) -> None:
    services = events
    insert_events(services, range(2, 17, 2), age_s=60)
    run, _ = RunService(services.ledger, RecordingEnqueue()).start_run(
        "events_incremental", interval=date(2026, 5, 1)
    )
    pending = steps.plan_run(services, run.id)
    assert pending is not None and pending[0].key_lo <= 3 < pending[0].key_hi
    # a row stamped after planning is not read, even with a key inside a planned chunk
    insert_events(services, range(3, 4), age_s=0)
    for chunk in pending:
        steps.transform_chunk(services, run.id, chunk.index)
    assert steps.commit_run(services, run.id).state is RunState.SUCCEEDED
    assert sorted(read_ids(services, run.id)) == list(range(2, 17, 2))


def test_a_retried_run_whose_window_was_committed_since_is_refused(events: Services) -> None:
    services = events
    insert_events(services, range(1, 5), age_s=60)
    service = RunService(services.ledger, RecordingEnqueue())
    stale, _ = service.start_run("events_incremental", interval=date(2026, 5, 1))
    assert steps.plan_run(services, stale.id) is not None
    services.ledger.fail_run(stale.id, "worker lost")  # its window: (unset, high]

    _, rows = run_once(services, date(2026, 5, 2))  # the next run reads that window too
    assert sorted(rows) == [1, 2, 3, 4]

    service.retry_run(stale.id)
    resumed = steps.plan_run(services, stale.id)  # admitted again, with its first window
    assert resumed is not None
    for chunk in resumed:
        steps.transform_chunk(services, stale.id, chunk.index)
    refused = steps.commit_run(services, stale.id)

    assert refused.state is RunState.FAILED
    assert refused.reason is not None and "already committed this window" in refused.reason
    assert refused.manifest_key is None


def test_full_refresh_pipelines_record_no_cursor_window(services: Services) -> None:
    from etl.adapters.sample_orders import seed_orders

    seed_orders(services.source_engine, 100)
    run, _ = RunService(services.ledger, RecordingEnqueue()).start_run(
        "orders_daily", interval=date(2026, 5, 3), params={"chunk_size": 50}
    )
    steps.plan_run(services, run.id)
    window = services.ledger.get_run(run.id).window
    assert window is not None and window.cursor is None and window.key_min == 1
    services.ledger.fail_run(run.id, "test over")


def test_two_backfills_of_the_same_dates_at_once_start_each_date_once(
    services: Services,
) -> None:
    ledger = services.ledger
    days = [date(2025, 3, d) for d in range(1, 4)]
    before = {run.id for run in ledger.list_runs(date_from=days[0], date_to=days[-1])}
    # Both planned on the same ledger, then recorded at the same moment.
    covering = (utc_day(days[0]).start, utc_day(days[-1]).start)
    planned_on = {
        moment: run.id
        for moment, run in ledger.latest_runs_by_interval("orders_daily", *covering).items()
    }
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def record() -> None:
        barrier.wait()
        try:
            backfill, _ = ledger.create_backfill(
                pipeline="orders_daily",
                start=days[0],
                end=days[-1],
                max_active=1,
                reprocess="none",
                params={},
                intervals=[(utc_day(day), day, day.isoformat()) for day in days],
                planned_on=planned_on,
                covering=covering,
            )
            outcomes.append(f"started {backfill.id}")
        except BackfillConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(o.split()[0] for o in outcomes) == ["conflict", "started"]
    [started] = [o.split()[1] for o in outcomes if o.startswith("started")]
    runs = [
        run for run in ledger.list_runs(date_from=days[0], date_to=days[-1]) if run.id not in before
    ]
    assert sorted(run.logical_date for run in runs) == days  # each date once
    assert {run.backfill_id for run in runs} == {started}
    for run in runs:  # leave nothing active for the other tests
        ledger.fail_run(run.id, "test over")
