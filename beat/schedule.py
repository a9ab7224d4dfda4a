"""The Beat schedule, built from the pipelines' own schedules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from etl.celery_app import TASK_RECONCILE, TASK_START_SCHEDULED_RUN
from etl.pipelines import Pipeline


@dataclass(frozen=True)
class ZoneClock:
    """The current time in one timezone: a crontab's ``nowfun``.

    A class, not a lambda: Beat pickles its schedule entries (nowfun included) and
    compares them by value to notice a changed schedule.
    """

    timezone: str

    def __call__(self) -> datetime:
        return datetime.now(ZoneInfo(self.timezone))


def parse_cron(expression: str, timezone: str) -> crontab:
    """A five-field cron expression, read in an IANA timezone."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression needs 5 fields, got {len(fields)}: {expression!r}")
    ZoneInfo(timezone)  # an unknown zone fails here, at start-up
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
        nowfun=ZoneClock(timezone),
    )


RECONCILE_EVERY_S = 60


def beat_schedule(pipelines: dict[str, Pipeline]) -> dict[str, dict[str, Any]]:
    """One Beat entry per scheduled pipeline, sending ``etl.start_scheduled_run``, and
    the reconciler every minute."""
    reconciler = {
        "reconcile": {
            "task": TASK_RECONCILE,
            "schedule": RECONCILE_EVERY_S,
            # A tick nobody ran before the next one is due is worthless.
            "options": {"expires": RECONCILE_EVERY_S},
        }
    }
    return reconciler | {
        f"nightly:{name}": {
            "task": TASK_START_SCHEDULED_RUN,
            "schedule": parse_cron(pipeline.schedule.cron, pipeline.schedule.timezone),
            "args": [name],
            # A Beat tick that nobody picks up within an hour is stale; the next one wins.
            "options": {"expires": 3600},
        }
        for name, pipeline in pipelines.items()
        if pipeline.schedule is not None
    }
