"""The Beat schedule, built from the pipelines' own schedules (data only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from etl.domain.schedules import CatchUp, Every, Schedule
from etl.pipelines import Pipeline
from etl.worker.app import TASK_RECONCILE, TASK_START_SCHEDULED_RUN

RECONCILE_EVERY_S = 60
# A slot at most this old when Beat sees it is on time, whatever the catch-up policy:
# Beat woke a little late, or another Beat just took over from a dead leader.
ON_TIME_GRACE_S = 300


@dataclass(frozen=True)
class Entry:
    """One thing Beat sends on a schedule."""

    name: str
    schedule: Schedule
    task: str
    catch_up: CatchUp
    catch_up_limit: int
    # The pipeline a slot starts a run of (its interval comes from the slot), or None
    # for a task with no interval (the reconciler).
    pipeline: str | None = None
    # A message nobody took within this many seconds is dropped by the broker.
    expires_s: int | None = None

    def logical_date(self, slot: datetime) -> date | None:
        """The logical date of the run a slot starts (None: not a pipeline entry)."""
        if self.pipeline is None:
            return None
        return self.schedule.grain.logical_date(self.schedule.interval_for(slot))

    def args(self, slot: datetime) -> list[Any]:
        """The task's arguments for one slot: the pipeline, and its run's interval as the
        pipeline names it (a date for a daily one, the start for a finer one)."""
        if self.pipeline is None:
            return []
        grain = self.schedule.grain
        return [self.pipeline, grain.name(self.schedule.interval_for(slot))]


def schedule_entries(pipelines: dict[str, Pipeline]) -> list[Entry]:
    """One entry per scheduled pipeline, and the reconciler every minute."""
    reconciler = Entry(
        name="reconcile",
        schedule=Every(RECONCILE_EVERY_S),
        task=TASK_RECONCILE,
        catch_up=CatchUp.LATEST,
        catch_up_limit=1,
        # A tick nobody ran before the next one is due is worthless.
        expires_s=RECONCILE_EVERY_S,
    )
    return [reconciler] + [
        Entry(
            name=f"pipeline:{name}",
            schedule=pipeline.schedule,
            task=TASK_START_SCHEDULED_RUN,
            catch_up=pipeline.catch_up,
            catch_up_limit=pipeline.catch_up_limit,
            pipeline=name,
        )
        for name, pipeline in sorted(pipelines.items())
        if pipeline.schedule is not None
    ]
