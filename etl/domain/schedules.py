"""When a pipeline runs: schedule kinds, their slots, logical dates and catch-up.

A *slot* is an instant at which a schedule fires. Beat records the last slot it
dispatched per entry, so the next slots are computed from that record, never from the
moment Beat happens to wake up. The run a slot starts covers the data interval that
ended at the slot (etl.domain.intervals): each schedule knows its grain, and a schedule
that would fire twice in one interval is refused, since both slots would name one run.
All datetimes here are timezone-aware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache

from celery.schedules import crontab, solar

from etl.domain.intervals import EVERY_ANCHOR, DataInterval, Grain, GrainKind, zone

# How far ahead a cron expression is searched for its next slot ("0 0 29 2 1" fires
# only when 29 February is a Monday: every 28 years at most).
_CRON_SEARCH_DAYS = 366 * 29


class CatchUp(StrEnum):
    """What Beat does with slots it missed while no Beat was running."""

    NONE = "none"  # skip them; wait for the next slot
    LATEST = "latest"  # dispatch only the most recent one
    ALL = "all"  # dispatch each of them, oldest first, up to a limit


def aware_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"a schedule needs an aware datetime, got {moment!r}")
    return moment


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression read on the wall clock of an IANA timezone.

    Daylight saving: a wall time skipped by a spring-forward change fires at the same
    offset after the change (02:30 becomes 03:30), once; a wall time repeated by a
    fall-back change fires at its first occurrence only. Day-of-month and day-of-week
    must both match, as in Celery's crontab.

    ``interval`` is what each run covers: ``"day"`` (the local day ``logical_date_lag_days``
    before the slot's: a 02:00 run covers yesterday) or ``"hour"`` (the hour before the
    slot). The expression may fire at most once per interval.
    """

    expression: str = "0 2 * * *"
    timezone: str = "UTC"
    logical_date_lag_days: int = 1
    interval: str = "day"
    _fields: crontab = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"cron expression needs 5 fields, got {len(fields)}: {self.expression!r}"
            )
        zone(self.timezone)
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            parsed = crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            )
        except Exception as exc:  # celery raises several types for a bad field
            raise ValueError(f"bad cron expression {self.expression!r}: {exc}") from None
        object.__setattr__(self, "_fields", parsed)
        if self.interval not in ("day", "hour"):
            raise ValueError(f'a cron interval is "day" or "hour", not {self.interval!r}')
        per_hour = len(parsed.minute)
        per_day = per_hour * len(parsed.hour)
        if self.interval == "day" and per_day > 1:
            raise ValueError(
                f"cron {self.expression!r} fires up to {per_day} times a day, but each run "
                f"covers a day, so its slots would name the same run: fire once a day, or "
                f'give interval="hour" (once an hour at most) or use Every(seconds)'
            )
        if self.interval == "hour" and per_hour > 1:
            raise ValueError(
                f"cron {self.expression!r} fires up to {per_hour} times an hour, but each run "
                f"covers an hour: fire once an hour, or use Every(seconds)"
            )

    @property
    def grain(self) -> Grain:
        """The intervals its runs cover."""
        kind = GrainKind.DAY if self.interval == "day" else GrainKind.HOUR
        return Grain(kind, self.timezone)

    def interval_for(self, slot: datetime) -> DataInterval:
        """The interval the run of ``slot`` covers: the one that ended at the slot."""
        return _interval_before(self.grain, self.logical_date_lag_days, slot)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment``."""
        local_day = aware_utc(moment).astimezone(zone(self.timezone)).date()
        # Wall times near a DST change can map out of order, so take the earliest
        # instant after ``moment`` over two consecutive days before moving on.
        for offset in range(_CRON_SEARCH_DAYS):
            day = local_day + timedelta(days=offset)
            candidates = [
                slot
                for candidate_day in (day, day + timedelta(days=1))
                for slot in _cron_slots_on(self, candidate_day)
                if slot > moment
            ]
            if candidates:
                return min(candidates)
        raise ValueError(f"cron expression {self.expression!r} never fires")

    def describe(self) -> dict[str, object]:
        """The schedule as data."""
        return {"kind": "cron", "expression": self.expression, "timezone": self.timezone}


@lru_cache(maxsize=128)
def _cron_slots_on(cron: Cron, day: date) -> tuple[datetime, ...]:
    """A cron expression's slots on one local day (cached: Beat asks for the same day
    once per slot while catching up)."""
    fields = cron._fields
    # Celery numbers weekdays from Sunday = 0; isoweekday() has Sunday = 7.
    if (
        day.month not in fields.month_of_year
        or day.day not in fields.day_of_month
        or day.isoweekday() % 7 not in fields.day_of_week
    ):
        return ()
    cron_zone = zone(cron.timezone)
    slots = []
    for hour in sorted(fields.hour):
        for minute in sorted(fields.minute):
            # fold=0: a repeated wall time means its first occurrence; a skipped one
            # resolves with the offset before the change, i.e. shifted forward by the gap.
            wall = datetime.combine(day, time(hour, minute), tzinfo=cron_zone)
            slots.append(wall.astimezone(UTC))
            second = wall.replace(fold=1)
            if cron.interval == "hour" and _repeated(wall, second):
                # An hourly pipeline owes a run for each hour of a fall-back night,
                # the repeated one included: its slot fires at both occurrences.
                slots.append(second.astimezone(UTC))
    return tuple(slots)


def _repeated(first: datetime, second: datetime) -> bool:
    # The same wall time at two instants, both of which read back as that wall time.
    instants = (first.astimezone(UTC), second.astimezone(UTC))
    return instants[0] != instants[1] and all(
        instant.astimezone(first.tzinfo).replace(tzinfo=None, fold=0)
        == first.replace(tzinfo=None, fold=0)
        for instant in instants
    )


@dataclass(frozen=True)
class Every:
    """A fixed interval, counted from an anchor instant (midnight UTC, 1 January 2000).

    The run of each slot covers the ``seconds`` before it; ``timezone`` only names the
    runs' dates."""

    seconds: int
    timezone: str = "UTC"
    anchor: datetime = EVERY_ANCHOR

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ValueError(f"an interval must be at least 1 second, got {self.seconds}")
        zone(self.timezone)
        aware_utc(self.anchor)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment``."""
        elapsed = (aware_utc(moment) - self.anchor).total_seconds()
        steps = math.floor(elapsed / self.seconds) + 1
        return (self.anchor + timedelta(seconds=steps * self.seconds)).astimezone(UTC)

    @property
    def grain(self) -> Grain:
        """The intervals its runs cover."""
        return Grain(GrainKind.SECONDS, self.timezone, self.seconds, self.anchor)

    def interval_for(self, slot: datetime) -> DataInterval:
        """The interval the run of ``slot`` covers: the ``seconds`` that ended at it."""
        return self.grain.containing(slot - timedelta(seconds=self.seconds))

    def describe(self) -> dict[str, object]:
        """The schedule as data."""
        return {"kind": "interval", "seconds": self.seconds, "timezone": self.timezone}


@dataclass(frozen=True)
class Solar:
    """A solar event (``sunrise``, ``sunset``, ``dawn_civil``, ...) at a place, computed
    by Celery's solar schedule; ``timezone`` only decides the logical date."""

    event: str
    latitude: float
    longitude: float
    timezone: str = "UTC"
    logical_date_lag_days: int = 1

    def __post_init__(self) -> None:
        zone(self.timezone)
        self._at(datetime(2000, 1, 1, tzinfo=UTC))  # a bad event or place fails here

    def _at(self, moment: datetime) -> solar:
        return solar(self.event, self.latitude, self.longitude, nowfun=lambda: moment)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after ``moment``."""
        moment = aware_utc(moment).astimezone(UTC)
        # With the clock pinned at ``moment``, the estimate is exactly the time to the
        # next event after it.
        event: datetime = moment + self._at(moment).remaining_estimate(moment)
        # Slots are whole seconds, rounded up so that the next search, which starts
        # from the recorded slot, is already past this event.
        return event.replace(microsecond=0) + timedelta(seconds=1 if event.microsecond else 0)

    @property
    def grain(self) -> Grain:
        """The intervals its runs cover: days (an event happens at most once a day)."""
        return Grain(GrainKind.DAY, self.timezone)

    def interval_for(self, slot: datetime) -> DataInterval:
        """The interval the run of ``slot`` covers: a day, as a nightly cron's."""
        return _interval_before(self.grain, self.logical_date_lag_days, slot)

    def describe(self) -> dict[str, object]:
        """The schedule as data."""
        return {
            "kind": "solar",
            "event": self.event,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "timezone": self.timezone,
        }


# Every kind of schedule a pipeline can have.
Schedule = Cron | Every | Solar


def latest_slot(schedule: Schedule, moment: datetime) -> datetime | None:
    """The last slot at or before ``moment`` (None if there is none in the past year):
    the run a pipeline owes by now, for staleness alerts."""
    moment = aware_utc(moment)
    step = timedelta(hours=1)
    # Back off until a slot lies between the probe and the moment...
    probe = moment - step
    while schedule.next_after(probe) > moment:
        step *= 2
        if step > timedelta(days=400):
            return None
        probe = moment - step
    # ...then walk forward to the last one.
    slot = schedule.next_after(probe)
    while (following := schedule.next_after(slot)) <= moment:
        slot = following
    return slot


def _interval_before(grain: Grain, lag_days: int, slot: datetime) -> DataInterval:
    # A day grain: the slot's local day less the lag (a 02:00 nightly run processes
    # yesterday). An hour grain: the hour that ended at the slot.
    if grain.kind is GrainKind.DAY:
        local_day = aware_utc(slot).astimezone(zone(grain.timezone)).date()
        return grain.of_date(local_day - timedelta(days=lag_days))
    return grain.containing(slot - timedelta(hours=1))


# Runs of a pipeline without a schedule (manual and backfill only) cover UTC days.
MANUAL_GRAIN = Grain(GrainKind.DAY, "UTC")


def logical_date_for(schedule: Schedule, slot: datetime) -> date:
    """The logical date of the run a slot starts: its interval's date."""
    return schedule.grain.logical_date(schedule.interval_for(slot))


@dataclass(frozen=True)
class Dispatch:
    """What one scheduler tick decided for one entry."""

    slots: list[datetime]  # to dispatch now, oldest first
    skipped: list[datetime]  # missed and dropped by the catch-up policy
    last_slot: datetime  # what to record as the entry's last handled slot


def due_slots(
    schedule: Schedule,
    *,
    last_slot: datetime,
    now: datetime,
    catch_up: CatchUp,
    catch_up_limit: int,
    grace_s: float,
) -> Dispatch:
    """The slots in ``(last_slot, now]`` and which of them to dispatch.

    A slot at most ``grace_s`` old is on time and always dispatched (Beat woke a little
    late, or another Beat just took over). Older slots were missed while no Beat ran and
    follow the catch-up policy.
    """
    slots: list[datetime] = []
    # Bounded: a one-second interval after a year of downtime must not build a list of
    # 31 million slots; only the newest ``keep`` ones can matter.
    keep = max(catch_up_limit, 1) + 1
    slot = schedule.next_after(last_slot)
    while slot <= now:
        slots.append(slot)
        if len(slots) > 4 * keep:
            del slots[: len(slots) - keep]
        slot = schedule.next_after(slot)
    if not slots:
        return Dispatch(slots=[], skipped=[], last_slot=last_slot)
    grace = timedelta(seconds=grace_s)
    on_time = [s for s in slots if now - s <= grace]
    missed = [s for s in slots if now - s > grace]
    if catch_up is CatchUp.ALL:
        chosen = missed[-catch_up_limit:] if catch_up_limit > 0 else []
    elif catch_up is CatchUp.LATEST:
        chosen = missed[-1:] if not on_time else []
    else:
        chosen = []
    return Dispatch(
        slots=chosen + on_time,
        skipped=[s for s in missed if s not in chosen],
        last_slot=slots[-1],
    )


def summarize(schedule: Schedule | None) -> str:
    """A schedule in a few words, for listings: ``cron "0 2 * * *" UTC``."""
    if schedule is None:
        return "manual only"
    described = schedule.describe()
    if described["kind"] == "cron":
        return f'cron "{described["expression"]}" {schedule.timezone}'
    if described["kind"] == "interval":
        return f"every {described['seconds']}s"
    return f"{described['event']} at {described['latitude']},{described['longitude']}"


_WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def in_words(schedule: Schedule | None) -> str:
    """The schedule for people: "every day at 02:00 Europe/Berlin", "every 60 seconds"."""
    if schedule is None:
        return "manual only"
    if isinstance(schedule, Every):
        return _every_in_words(schedule.seconds)
    if isinstance(schedule, Solar):
        return (
            f"at {schedule.event.replace('_', ' ')} at "
            f"{schedule.latitude:g}, {schedule.longitude:g} ({schedule.timezone} dates)"
        )
    return _cron_in_words(schedule)


def _every_in_words(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600)):
        if seconds % size == 0:
            count = seconds // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return "every second" if seconds == 1 else f"every {seconds} seconds"


def _cron_in_words(cron: Cron) -> str:
    minute, hour, day_of_month, month, day_of_week = cron.expression.split()
    fields = cron._fields
    if not (minute.isdigit() and (hour.isdigit() or hour == "*")):
        return f"cron {cron.expression} {cron.timezone}"
    if hour == "*":
        when = f"every hour at minute {int(minute)}"
    else:
        when = f"at {int(hour):02d}:{int(minute):02d}"
    days: list[str] = []
    if day_of_week != "*":
        days.append("on " + ", ".join(_WEEKDAYS[d] for d in sorted(fields.day_of_week)))
    if day_of_month != "*":
        days.append("on day " + ", ".join(str(d) for d in sorted(fields.day_of_month)))
    if month != "*":
        days.append("in " + ", ".join(_MONTHS[m - 1] for m in sorted(fields.month_of_year)))
    if hour == "*":
        return " ".join([when, *days, cron.timezone])
    return " ".join(["every day" if not days else "", *days, when, cron.timezone]).strip()
