"""A run's data interval: the slice of time it extracts, ``[start, end)``.

Every run covers one interval of its pipeline's *grain*: a day or an hour on the wall
clock of the pipeline's time zone, or a fixed number of seconds counted from an anchor.
A scheduled run covers the interval that ended at its slot (a 02:00 nightly run covers
the day before; an hourly run the hour before); a run is identified by its pipeline and
its interval's start, so two slots can never collapse into one run. All datetimes here
are timezone-aware; intervals are kept in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from etl.domain.dates import YYYY_MM_DD, parse_logical_date

# A backfill longer than this many intervals is almost certainly a typo in a year.
MAX_INTERVALS = 10_000
# Every(N) counts its slots, and its intervals, from here.
EVERY_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it if there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {name!r}") from None


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"a data interval needs an aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class DataInterval:
    """The rows of a run are those stamped ``start <= t < end`` (UTC)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _aware(self.start))
        object.__setattr__(self, "end", _aware(self.end))
        if self.end <= self.start:
            raise ValueError(f"a data interval ends after it starts: {self.start} .. {self.end}")

    def as_dict(self) -> dict[str, str]:
        """The interval in a manifest or an API answer."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


class GrainKind(StrEnum):
    """How long a pipeline's intervals are."""

    DAY = "day"  # a local calendar day (23 or 25 hours across a DST change)
    HOUR = "hour"  # an hour of the local wall clock
    SECONDS = "seconds"  # a fixed length, counted from EVERY_ANCHOR


@dataclass(frozen=True)
class Grain:
    """The intervals of one pipeline: which instants start one, and how long each is."""

    kind: GrainKind = GrainKind.DAY
    timezone: str = "UTC"
    seconds: int = 0  # SECONDS only
    anchor: datetime = EVERY_ANCHOR  # SECONDS only

    def __post_init__(self) -> None:
        zone(self.timezone)
        if self.kind is GrainKind.SECONDS and self.seconds < 1:
            raise ValueError(f"an interval is at least 1 second, not {self.seconds}")

    @property
    def sub_daily(self) -> bool:
        """Whether a day holds more than one interval: runs are then named by a timestamp."""
        return self.kind is not GrainKind.DAY and not (
            self.kind is GrainKind.SECONDS and self.seconds >= 86_400
        )

    def describe(self) -> str:
        """The grain in a few words: ``day (Europe/Berlin)``, ``hour (UTC)``, ``300 s``."""
        if self.kind is GrainKind.SECONDS:
            return f"{self.seconds} s"
        return f"{self.kind.value} ({self.timezone})"

    def containing(self, moment: datetime) -> DataInterval:
        """The interval ``moment`` falls in."""
        moment = _aware(moment)
        if self.kind is GrainKind.SECONDS:
            steps = (moment - self.anchor) // timedelta(seconds=self.seconds)
            start = self.anchor + steps * timedelta(seconds=self.seconds)
            return DataInterval(start, start + timedelta(seconds=self.seconds))
        local = moment.astimezone(zone(self.timezone))
        if self.kind is GrainKind.DAY:
            return self.of_date(local.date())
        # replace() keeps the fold, so the second 02:00 of a fall-back night is its own
        # hour; the hour is sixty minutes in every zone whose offsets are whole hours.
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return DataInterval(start, start + timedelta(hours=1))

    def of_date(self, day: date) -> DataInterval:
        """A day grain's interval for a logical date: local midnight to midnight."""
        if self.kind is not GrainKind.DAY:
            raise ValueError(
                f"a run whose interval is one {self.describe()} is named by the timestamp "
                f"that starts it, e.g. {self.on_dates(day, day)[0].start.isoformat()}, not a date"
            )
        return DataInterval(self._midnight(day), self._midnight(day + timedelta(days=1)))

    def following(self, interval: DataInterval) -> DataInterval:
        """The next interval."""
        return self.containing(interval.end)

    def last_complete(self, moment: datetime) -> DataInterval:
        """The latest interval that has ended by ``moment``: a manual run's default."""
        return self.containing(self.containing(moment).start - timedelta(microseconds=1))

    def starting_at(self, moment: datetime) -> DataInterval:
        """The interval that starts at ``moment``; ValueError if none does."""
        interval = self.containing(moment)
        if interval.start != _aware(moment):
            raise ValueError(
                f"{moment.isoformat()} does not start an interval (each is one "
                f"{self.describe()}); the one it falls in starts at {interval.start.isoformat()}"
            )
        return interval

    def logical_date(self, interval: DataInterval) -> date:
        """The interval's date: its start's day in the pipeline's time zone."""
        return interval.start.astimezone(zone(self.timezone)).date()

    def between(self, first: datetime, end: datetime) -> list[DataInterval]:
        """Every interval starting in ``[first, end)``, oldest first (``first`` must
        start one); ValueError past MAX_INTERVALS."""
        interval = self.starting_at(first)
        intervals: list[DataInterval] = []
        while interval.start < _aware(end):
            if len(intervals) == MAX_INTERVALS:
                raise ValueError(f"more than {MAX_INTERVALS} intervals of {self.describe()}")
            intervals.append(interval)
            interval = self.following(interval)
        return intervals

    def on_dates(self, first: date, last: date) -> list[DataInterval]:
        """Every interval starting on the local days ``first`` to ``last`` inclusive:
        one a day for a day grain, 24 an hour grain (23 or 25 across a DST change)."""
        if last < first:
            raise ValueError(f"end {last} is before start {first}")
        start = self.containing(self._midnight(first)).start
        if start < self._midnight(first):  # a fixed grain not aligned with midnight
            start = self.following(self.containing(start)).start
        return self.between(start, self._midnight(last + timedelta(days=1)))

    def in_range(self, first: date | datetime, last: date | datetime) -> list[DataInterval]:
        """The intervals a backfill range names: with dates, every interval starting on
        the local days ``first`` to ``last``; with timestamps, every interval from the
        one ``first`` starts to the one ``last`` starts, both included."""
        if isinstance(first, datetime) and isinstance(last, datetime):
            if last < first:
                raise ValueError(f"end {last.isoformat()} is before start {first.isoformat()}")
            return self.between(first, self.following(self.starting_at(last)).start)
        if isinstance(first, datetime) or isinstance(last, datetime):
            raise ValueError("a range is two dates or two timestamps, not one of each")
        return self.on_dates(first, last)

    def resolve(self, named: str | date | datetime | None, now: datetime) -> DataInterval:
        """The interval a request names (its text, its date, or the instant that starts
        it); None names the last interval that has ended by ``now``."""
        if named is None:
            return self.last_complete(now)
        if isinstance(named, str):
            return self.parse(named)
        if isinstance(named, datetime):
            return self.starting_at(named)
        return self.of_date(named)

    def parse(self, text: str) -> DataInterval:
        """The interval a user names: a YYYY-MM-DD logical date for a day grain, the
        ISO 8601 timestamp that starts it (with its offset) for a finer one."""
        if YYYY_MM_DD.fullmatch(text):
            return self.of_date(parse_logical_date(text))
        moment = parse_timestamp(text)
        return self.starting_at(moment)

    def name(self, interval: DataInterval) -> str:
        """How a user names ``interval`` (what ``parse`` reads back)."""
        if self.kind is GrainKind.DAY:
            return self.logical_date(interval).isoformat()
        return interval.start.isoformat()

    def _midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=zone(self.timezone)).astimezone(UTC)


def parse_timestamp(text: str) -> datetime:
    """An ISO 8601 timestamp with its UTC offset (``Z`` or ``+01:00``); ValueError naming
    what is wrong."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 timestamp: {text!r} (e.g. 2026-11-22T14:00:00+01:00)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"a timestamp needs its UTC offset (Z or +01:00): {text!r}")
    return moment.astimezone(UTC)


def parse_date_or_timestamp(text: str) -> date | datetime:
    """A YYYY-MM-DD date, or an ISO 8601 timestamp with its offset: one end of a range."""
    if YYYY_MM_DD.fullmatch(text):
        return parse_logical_date(text)
    return parse_timestamp(text)


def interval_from_dict(document: dict[str, Any] | None) -> DataInterval | None:
    """The interval ``DataInterval.as_dict`` wrote; None if there is none."""
    if not document:
        return None
    return DataInterval(
        datetime.fromisoformat(document["start"]), datetime.fromisoformat(document["end"])
    )
