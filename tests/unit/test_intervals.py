"""Data intervals: what each run of a schedule covers, across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from etl.domain.intervals import DataInterval, Grain, GrainKind
from etl.domain.schedules import Cron, Every

BERLIN = ZoneInfo("Europe/Berlin")
HOURLY_BERLIN = Grain(GrainKind.HOUR, "Europe/Berlin")


def test_a_nightly_berlin_run_on_the_23rd_covers_the_22nd_local_midnight_to_midnight() -> None:
    nightly = Cron("0 2 * * *", "Europe/Berlin")
    interval = nightly.interval_for(datetime(2026, 11, 23, 2, tzinfo=BERLIN))
    assert interval == DataInterval(
        datetime(2026, 11, 22, tzinfo=BERLIN), datetime(2026, 11, 23, tzinfo=BERLIN)
    )
    assert nightly.grain.logical_date(interval) == date(2026, 11, 22)


@pytest.mark.parametrize(
    ("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 7, 1), 24)]
)
def test_an_hourly_berlin_day_has_as_many_runs_as_hours_and_they_tile_it(
    day: date, hours: int
) -> None:
    intervals = HOURLY_BERLIN.on_dates(day, day)
    assert len(intervals) == hours
    assert intervals[0].start == datetime.combine(day, datetime.min.time(), BERLIN)
    assert intervals[-1].end == datetime.combine(
        day + timedelta(days=1), datetime.min.time(), BERLIN
    )
    assert all(a.end == b.start for a, b in pairwise(intervals))
    assert all(i.end - i.start == timedelta(hours=1) for i in intervals)
    assert {HOURLY_BERLIN.logical_date(i) for i in intervals} == {day}


def test_a_day_is_23_or_25_hours_long_across_a_change() -> None:
    daily = Grain(GrainKind.DAY, "Europe/Berlin")
    spring, autumn = daily.of_date(date(2026, 3, 29)), daily.of_date(date(2026, 10, 25))
    assert spring.end - spring.start == timedelta(hours=23)
    assert autumn.end - autumn.start == timedelta(hours=25)


def test_every_n_seconds_covers_the_n_seconds_before_each_slot() -> None:
    every = Every(60)
    slot = every.next_after(datetime(2026, 11, 22, 14, 0, 30, tzinfo=UTC))
    assert every.interval_for(slot) == DataInterval(slot - timedelta(seconds=60), slot)
    following = every.interval_for(every.next_after(slot))
    assert following.start == slot  # consecutive slots, consecutive intervals


def test_a_grain_names_its_runs_by_date_or_by_the_timestamp_that_starts_them() -> None:
    daily = Grain(GrainKind.DAY, "Europe/Berlin")
    assert daily.parse("2026-11-22") == daily.of_date(date(2026, 11, 22))
    assert HOURLY_BERLIN.parse("2026-11-22T14:00:00+01:00").start == datetime(
        2026, 11, 22, 13, tzinfo=UTC
    )
    assert HOURLY_BERLIN.name(HOURLY_BERLIN.parse("2026-11-22T13:00:00Z")) == (
        "2026-11-22T13:00:00+00:00"
    )
    with pytest.raises(ValueError, match=r"named by the timestamp that starts it, e\.g\. 2026"):
        HOURLY_BERLIN.parse("2026-11-22")
    with pytest.raises(
        ValueError,
        match=r"does not start an interval \(each is one hour \(Europe/Berlin\)\); the one",
    ):
        HOURLY_BERLIN.parse("2026-11-22T14:30:00+01:00")
    with pytest.raises(ValueError, match="needs its UTC offset"):
        HOURLY_BERLIN.parse("2026-11-22T14:00:00")
    with pytest.raises(ValueError, match="not an ISO 8601 timestamp"):
        HOURLY_BERLIN.parse("yesterday")


def test_the_default_interval_of_a_manual_run_is_the_last_one_that_ended() -> None:
    now = datetime(2026, 11, 22, 14, 25, tzinfo=UTC)
    assert HOURLY_BERLIN.last_complete(now).start == datetime(2026, 11, 22, 13, tzinfo=UTC)
    daily = Grain(GrainKind.DAY, "UTC")
    assert daily.last_complete(now) == daily.of_date(date(2026, 11, 21))


def test_a_backfill_range_is_bounded() -> None:
    with pytest.raises(ValueError, match="more than 10000 intervals"):
        Grain(GrainKind.SECONDS, seconds=1).on_dates(date(2026, 1, 1), date(2026, 1, 1))
    with pytest.raises(ValueError, match="before start"):
        HOURLY_BERLIN.on_dates(date(2026, 1, 2), date(2026, 1, 1))
