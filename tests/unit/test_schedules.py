"""Schedule kinds: their slots across daylight-saving changes, logical dates, catch-up."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from etl.domain.schedules import (
    CatchUp,
    Cron,
    Every,
    Solar,
    due_slots,
    latest_slot,
    logical_date_for,
    summarize,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def slots_between(schedule: Cron | Every | Solar, start: datetime, end: datetime) -> list[datetime]:
    found, slot = [], schedule.next_after(start)
    while slot <= end:
        found.append(slot)
        slot = schedule.next_after(slot)
    return found


def test_a_nightly_cron_fires_at_its_wall_time_in_its_timezone() -> None:
    nightly = Cron("0 2 * * *", "Europe/Berlin")
    slot = nightly.next_after(datetime(2026, 7, 1, 12, tzinfo=UTC))
    assert slot == datetime(2026, 7, 2, 2, tzinfo=BERLIN)
    assert slot.tzinfo is UTC


@pytest.mark.parametrize(
    ("zone", "spring_day", "fall_day"),
    [
        ("Europe/Berlin", date(2026, 3, 29), date(2026, 10, 25)),
        ("America/New_York", date(2026, 3, 8), date(2026, 11, 1)),
    ],
)
@pytest.mark.parametrize("wall", ["30 2 * * *", "0 2 * * *", "0 1 * * *", "59 3 * * *"])
def test_a_nightly_cron_fires_once_a_day_through_both_dst_changes(
    zone: str, spring_day: date, fall_day: date, wall: str
) -> None:
    nightly = Cron(wall, zone)
    for change in (spring_day, fall_day):
        start = datetime.combine(change - timedelta(days=3), datetime.min.time(), ZoneInfo(zone))
        slots = slots_between(nightly, start, start + timedelta(days=7))
        local_days = [slot.astimezone(ZoneInfo(zone)).date() for slot in slots]
        # one slot on each of the seven days: none skipped, none doubled
        assert local_days == [change - timedelta(days=3 - n) for n in range(7)], slots
        assert [logical_date_for(nightly, s) for s in slots] == [
            d - timedelta(1) for d in local_days
        ]


def test_a_wall_time_skipped_by_spring_forward_fires_after_the_gap() -> None:
    nightly = Cron("30 2 * * *", "Europe/Berlin")
    slot = nightly.next_after(datetime(2026, 3, 29, 0, tzinfo=UTC))
    # 02:30 does not exist that night; the slot is the same instant as 03:30 CEST
    assert slot == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert slot.astimezone(BERLIN).hour == 3


def test_a_wall_time_repeated_by_fall_back_fires_at_its_first_occurrence_only() -> None:
    nightly = Cron("30 2 * * *", "Europe/Berlin")
    first = nightly.next_after(datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert first == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert nightly.next_after(first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_cron_that_covers_days_fires_a_repeated_wall_time_once() -> None:
    nightly = Cron("30 1 * * *", "America/New_York")
    start = datetime(2026, 11, 1, 0, tzinfo=NEW_YORK)
    slots = slots_between(nightly, start - timedelta(seconds=1), start + timedelta(hours=24))
    assert slots == [datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]  # 01:30 EDT, not 01:30 EST


def test_an_hourly_cron_fires_at_both_01_00s_of_a_fall_back_day_and_its_runs_tile_it() -> None:
    hourly = Cron("0 * * * *", "America/New_York", interval="hour")
    start = datetime(2026, 11, 1, 0, tzinfo=NEW_YORK).astimezone(UTC)
    slots = slots_between(hourly, start, start + timedelta(hours=25))  # local midnights
    walls = [slot.astimezone(NEW_YORK).hour for slot in slots]
    assert walls == [1, 1, *range(2, 24), 0]  # 25 hours, the repeated one twice
    intervals = [hourly.interval_for(slot) for slot in slots]
    assert intervals[0].start == start
    assert all(a.end == b.start for a, b in pairwise(intervals))
    assert intervals[-1].end == datetime(2026, 11, 2, 0, tzinfo=NEW_YORK)


def test_a_cron_that_fires_twice_in_its_interval_is_refused_saying_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"fires up to 24 times a day.*interval=\"hour\""):
        Cron("0 * * * *")
    with pytest.raises(ValueError, match=r"fires up to 4 times an hour.*Every"):
        Cron("*/15 * * * *", interval="hour")


def test_cron_day_fields_must_all_match() -> None:
    mondays_in_june = Cron("0 6 * 6 1", "UTC")
    slots = slots_between(
        mondays_in_june, datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert [s.day for s in slots] == [1, 8, 15, 22, 29]
    assert all(s.weekday() == 0 and s.month == 6 for s in slots)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [("0 2 * *", "needs 5 fields"), ("61 2 * * *", "bad cron expression"), ("0 25 * * *", "bad")],
)
def test_a_bad_cron_expression_is_refused_with_the_reason(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Cron(expression, "UTC")


def test_an_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown IANA timezone 'Mars/Olympus'"):
        Cron("0 2 * * *", "Mars/Olympus")


def test_an_interval_counts_from_its_anchor_not_from_when_it_is_asked() -> None:
    every_minute = Every(60)
    assert every_minute.next_after(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 1, tzinfo=UTC
    )
    assert every_minute.next_after(datetime(2026, 1, 1, 0, 1, tzinfo=UTC)) == datetime(
        2026, 1, 1, 0, 2, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="at least 1 second"):
        Every(0)


def test_a_solar_schedule_fires_once_per_sunrise() -> None:
    sunrise = Solar("sunrise", 52.52, 13.40, "Europe/Berlin")
    slots = slots_between(
        sunrise, datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 4, tzinfo=UTC)
    )
    assert [s.date() for s in slots] == [date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 3)]
    # Berlin's June sunrise is a little before 05:00 local time
    assert all(time.astimezone(BERLIN).hour == 4 for time in slots)
    with pytest.raises(ValueError):
        Solar("moonrise", 52.52, 13.40)


def test_a_schedule_needs_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="aware"):
        Cron().next_after(datetime(2026, 1, 1))


def test_summaries_name_the_schedule() -> None:
    assert summarize(Cron("0 2 * * *", "Europe/Berlin")) == 'cron "0 2 * * *" Europe/Berlin'
    assert summarize(Every(300)) == "every 300s"
    assert summarize(None) == "manual only"


NIGHTLY = Cron("0 2 * * *", "UTC")
LAST = datetime(2026, 5, 1, 2, tzinfo=UTC)  # the slot handled before Beat went down


def decide(catch_up: CatchUp, now: datetime, limit: int = 3) -> tuple[list[date], list[date]]:
    decision = due_slots(
        NIGHTLY, last_slot=LAST, now=now, catch_up=catch_up, catch_up_limit=limit, grace_s=300
    )
    assert decision.last_slot <= now
    return [s.date() for s in decision.slots], [s.date() for s in decision.skipped]


def test_nothing_is_due_before_the_next_slot() -> None:
    decision = due_slots(
        NIGHTLY,
        last_slot=LAST,
        now=LAST + timedelta(hours=23),
        catch_up=CatchUp.ALL,
        catch_up_limit=3,
        grace_s=300,
    )
    assert decision.slots == [] and decision.last_slot == LAST


def test_a_slot_seen_within_the_grace_is_on_time_under_every_policy() -> None:
    now = datetime(2026, 5, 2, 2, 4, tzinfo=UTC)
    for policy in CatchUp:
        assert decide(policy, now) == ([date(2026, 5, 2)], [])


def test_catch_up_none_skips_every_missed_slot() -> None:
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)  # down for the nights of the 2nd to the 5th
    sent, skipped = decide(CatchUp.NONE, now)
    assert sent == [] and skipped == [date(2026, 5, d) for d in (2, 3, 4, 5)]


def test_catch_up_latest_sends_only_the_most_recent_missed_slot() -> None:
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)
    assert decide(CatchUp.LATEST, now) == (
        [date(2026, 5, 5)],
        [date(2026, 5, d) for d in (2, 3, 4)],
    )


def test_catch_up_latest_leaves_missed_slots_when_one_is_on_time() -> None:
    now = datetime(2026, 5, 5, 2, 1, tzinfo=UTC)
    assert decide(CatchUp.LATEST, now) == (
        [date(2026, 5, 5)],
        [date(2026, 5, d) for d in (2, 3, 4)],
    )


def test_catch_up_all_sends_every_missed_slot_oldest_first_up_to_the_limit() -> None:
    now = datetime(2026, 5, 5, 12, tzinfo=UTC)
    assert decide(CatchUp.ALL, now, limit=10) == ([date(2026, 5, d) for d in (2, 3, 4, 5)], [])
    assert decide(CatchUp.ALL, now, limit=2) == ([date(2026, 5, 4), date(2026, 5, 5)], [
        date(2026, 5, 2), date(2026, 5, 3)
    ])  # fmt: skip


def test_a_long_downtime_of_a_fast_schedule_stays_cheap() -> None:
    decision = due_slots(
        Every(1),
        last_slot=LAST,
        now=LAST + timedelta(days=2),
        catch_up=CatchUp.ALL,
        catch_up_limit=3,
        grace_s=0,
    )
    # the three newest missed slots, then the one falling exactly on ``now`` (on time)
    assert decision.slots == [LAST + timedelta(days=2, seconds=-n) for n in (3, 2, 1, 0)]
    assert decision.last_slot == LAST + timedelta(days=2)


@pytest.mark.parametrize(
    ("schedule", "moment", "expected"),
    [
        (
            Cron("0 2 * * *", timezone="UTC"),
            datetime(2026, 11, 5, 9, tzinfo=UTC),
            datetime(2026, 11, 5, 2, tzinfo=UTC),
        ),
        (
            Cron("0 2 * * *", timezone="UTC"),
            datetime(2026, 11, 5, 2, tzinfo=UTC),
            datetime(2026, 11, 5, 2, tzinfo=UTC),
        ),  # at the slot itself
        (
            Cron("0 2 * * *", timezone="UTC"),
            datetime(2026, 11, 5, 1, 59, tzinfo=UTC),
            datetime(2026, 11, 4, 2, tzinfo=UTC),
        ),
        (
            Cron("30 2 * * 1", timezone="Europe/Berlin"),
            datetime(2026, 11, 5, 12, tzinfo=UTC),
            datetime(2026, 11, 2, 1, 30, tzinfo=UTC),
        ),  # weekly, Monday 02:30 Berlin (CET)
        (
            Every(900),
            datetime(2026, 11, 5, 9, 7, tzinfo=UTC),
            datetime(2026, 11, 5, 9, 0, tzinfo=UTC),
        ),
    ],
    ids=["earlier today", "at the slot", "yesterday's", "weekly in Berlin", "every 15 min"],
)
def test_the_latest_slot_is_the_run_a_pipeline_owes_by_now(
    schedule: Cron | Every, moment: datetime, expected: datetime
) -> None:
    assert latest_slot(schedule, moment) == expected
