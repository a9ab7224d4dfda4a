"""Beat's dispatcher, walked through days with a fake clock on a SQLite ledger: one
dispatch per slot through daylight-saving changes, restarts that neither re-send nor
forget, catch-up after downtime, and a failed send that is tried again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from beat.schedule import RECONCILE_EVERY_S, Entry, schedule_entries
from beat.scheduler import Dispatcher
from etl.adapters.ledger.beat import BeatState, LeaderLock
from etl.domain.schedules import CatchUp, Cron
from etl.pipelines import PIPELINES

from builders import beat_ticks

BERLIN_NIGHTLY = Entry(
    name="pipeline:orders_daily",
    schedule=Cron("30 2 * * *", "Europe/Berlin"),
    task="etl.start_scheduled_run",
    catch_up=CatchUp.LATEST,
    catch_up_limit=7,
    pipeline="orders_daily",
)


class Sent:
    """What the dispatcher sent, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[Any], int | None]] = []
        self.fail_next = 0

    def __call__(self, task: str, args: list[Any], expires_s: int | None) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("broker refused the publish")
        self.messages.append((task, args, expires_s))

    @property
    def dates(self) -> list[str]:
        return [args[1] for _, args, _ in self.messages]


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def lock(sqlite_engine: Engine) -> Iterator[LeaderLock]:
    lock = LeaderLock(str(sqlite_engine.url))
    yield lock
    lock.release()


def dispatcher(engine: Engine, lock: LeaderLock, sent: Sent, *entries: Entry) -> Dispatcher:
    return Dispatcher(list(entries), BeatState(engine), lock, sent, holder="test-beat")


def walk(d: Dispatcher, start: datetime, end: datetime, step: timedelta) -> None:
    """Tick at every ``step`` from start to end, as a Beat that never sleeps too long."""
    moment = start
    while moment <= end:
        d.tick(moment)
        moment += step


def test_the_schedule_has_the_reconciler_and_one_entry_per_scheduled_pipeline() -> None:
    # Only the built-in pipeline: other tests of the session may have registered more.
    builtin = {"orders_daily": PIPELINES["orders_daily"]}
    entries = {entry.name: entry for entry in schedule_entries(builtin)}
    assert set(entries) == {"reconcile", "pipeline:orders_daily"}
    reconcile = entries["reconcile"]
    assert reconcile.task == "etl.reconcile" and reconcile.expires_s == RECONCILE_EVERY_S
    slot = datetime(2026, 5, 2, 2, tzinfo=UTC)
    assert reconcile.args(slot) == []
    nightly = entries["pipeline:orders_daily"]
    assert nightly.task == "etl.start_scheduled_run"
    # the 02:00 slot of 2 May starts the run of 1 May, named by its date
    assert nightly.args(slot) == ["orders_daily", "2026-05-01"]


def test_an_hourly_entry_names_each_slots_run_by_the_start_of_the_hour_before_it() -> None:
    hourly = replace(
        PIPELINES["orders_daily"],
        name="orders_hourly",
        schedule=Cron("5 * * * *", "Europe/Berlin", interval="hour"),
    )
    [entry] = [e for e in schedule_entries({"orders_hourly": hourly}) if e.pipeline]
    slot = datetime(2026, 10, 25, 0, 5, tzinfo=UTC)  # 02:05 CEST, the first 02:05 that night
    assert entry.args(slot) == ["orders_hourly", "2026-10-24T23:00:00+00:00"]
    assert entry.logical_date(slot) == date(2026, 10, 25)


@pytest.mark.parametrize(
    ("label", "start"),
    [
        ("spring forward", datetime(2026, 3, 26, 12, tzinfo=UTC)),
        ("fall back", datetime(2026, 10, 22, 12, tzinfo=UTC)),
    ],
)
def test_a_nightly_run_is_dispatched_once_per_night_across_a_dst_change(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent, label: str, start: datetime
) -> None:
    d = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)

    walk(d, start, start + timedelta(days=6), timedelta(minutes=1))

    first = start.date() + timedelta(days=1)
    nights = [first + timedelta(days=n) for n in range(6)]
    # one run per night, for the day before it: nothing skipped, nothing doubled
    assert sent.dates == [(night - timedelta(days=1)).isoformat() for night in nights], label
    ticks = beat_ticks(sqlite_engine, BERLIN_NIGHTLY.name)
    assert [t.logical_date for t in ticks] == [n - timedelta(days=1) for n in nights]
    assert not any(t.catch_up for t in ticks)


def test_a_restarted_beat_neither_resends_nor_forgets(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent
) -> None:
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    first = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)
    walk(first, start, start + timedelta(days=1), timedelta(minutes=5))
    assert sent.dates == ["2026-05-01"]

    # Restarted two minutes after the next slot (inside the grace): it is sent once.
    second = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)
    second.tick(datetime(2026, 5, 3, 0, 32, tzinfo=UTC))
    second.tick(datetime(2026, 5, 3, 0, 33, tzinfo=UTC))
    third = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)
    third.tick(datetime(2026, 5, 3, 0, 34, tzinfo=UTC))
    assert sent.dates == ["2026-05-01", "2026-05-02"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (CatchUp.NONE, []),
        (CatchUp.LATEST, ["2026-05-04"]),
        (CatchUp.ALL, ["2026-05-02", "2026-05-03", "2026-05-04"]),
    ],
)
def test_missed_nights_follow_the_pipelines_catch_up_policy(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent, policy: CatchUp, expected: list[str]
) -> None:
    entry = replace(BERLIN_NIGHTLY, catch_up=policy)
    d = dispatcher(sqlite_engine, lock, sent, entry)
    d.tick(datetime(2026, 5, 2, 12, tzinfo=UTC))  # first start: history is not run
    assert sent.dates == []

    # Beat was down from the 2nd at noon until the 5th at noon: three nights missed.
    d.tick(datetime(2026, 5, 5, 12, tzinfo=UTC))
    assert sent.dates == expected
    catch_up = [t for t in beat_ticks(sqlite_engine, entry.name) if t.catch_up]
    assert [t.logical_date.isoformat() for t in catch_up if t.logical_date] == expected


def test_a_send_the_broker_refuses_is_not_recorded_and_is_tried_again(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent
) -> None:
    d = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)
    d.tick(datetime(2026, 5, 1, 12, tzinfo=UTC))
    sent.fail_next = 1

    assert d.tick(datetime(2026, 5, 2, 0, 31, tzinfo=UTC)) == d.poll_s
    assert sent.dates == [] and beat_ticks(sqlite_engine, BERLIN_NIGHTLY.name) == []

    d.tick(datetime(2026, 5, 2, 0, 31, 5, tzinfo=UTC))
    assert sent.dates == ["2026-05-01"]


def test_the_reconciler_is_sent_every_minute_with_an_expiry(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent
) -> None:
    reconcile = next(e for e in schedule_entries(PIPELINES) if e.name == "reconcile")
    d = dispatcher(sqlite_engine, lock, sent, reconcile)
    start = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)

    walk(d, start, start + timedelta(minutes=5), timedelta(seconds=10))

    assert sent.messages == [("etl.reconcile", [], RECONCILE_EVERY_S)] * 5


def test_the_next_tick_comes_at_the_next_slot_or_the_leader_poll(
    sqlite_engine: Engine, lock: LeaderLock, sent: Sent
) -> None:
    d = dispatcher(sqlite_engine, lock, sent, BERLIN_NIGHTLY)
    assert d.tick(datetime(2026, 5, 2, 0, 29, 58, tzinfo=UTC)) == 2.0
    assert d.tick(datetime(2026, 5, 2, 12, tzinfo=UTC)) == d.poll_s
