"""The Beat schedule: the reconciler every minute, one nightly entry per pipeline, and
entries that survive Beat's pickled shelve."""

from __future__ import annotations

import pickle
import shelve
from datetime import timedelta
from pathlib import Path

import pytest
from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import crontab

from beat.schedule import RECONCILE_EVERY_S, ZoneClock, beat_schedule
from etl.celery_app import EtlCelery, make_celery
from etl.config import Settings
from etl.pipelines import PIPELINES


@pytest.fixture
def app() -> EtlCelery:
    # Nothing here connects: the app, its backend and Beat's store are all lazy or local.
    return make_celery(
        Settings(
            broker_url="amqp://guest:guest@127.0.0.1:1//", result_backend="redis://127.0.0.1:1/0"
        )
    )


def test_the_reconciler_runs_every_minute_and_a_missed_tick_expires() -> None:
    entry = beat_schedule(PIPELINES)["reconcile"]

    assert entry["task"] == "etl.reconcile"
    assert entry["schedule"] == RECONCILE_EVERY_S == 60
    assert entry["options"] == {"expires": 60}
    assert "args" not in entry


def test_the_nightly_entry_starts_the_scheduled_run_of_its_pipeline() -> None:
    schedule = beat_schedule(PIPELINES)

    assert set(schedule) == {"reconcile", "nightly:orders_daily"}
    nightly = schedule["nightly:orders_daily"]
    assert nightly["task"] == "etl.start_scheduled_run"
    assert nightly["args"] == ["orders_daily"]
    assert nightly["options"] == {"expires": 3600}
    cron = nightly["schedule"]
    assert isinstance(cron, crontab)
    assert (cron.minute, cron.hour) == ({0}, {2})
    assert cron.nowfun == ZoneClock("UTC")


def test_schedule_entries_compare_equal_after_a_pickle_round_trip(app: EtlCelery) -> None:
    entries = {
        name: ScheduleEntry(name=name, app=app, **entry)
        for name, entry in beat_schedule(PIPELINES).items()
    }

    restored = pickle.loads(pickle.dumps(entries))

    assert restored == entries
    assert restored["reconcile"].schedule.run_every == timedelta(seconds=60)
    assert restored["nightly:orders_daily"].schedule.nowfun == ZoneClock("UTC")
    assert pickle.loads(pickle.dumps(beat_schedule(PIPELINES))) == beat_schedule(PIPELINES)


def test_beats_shelve_stores_the_entries_and_a_restarted_beat_finds_them_unchanged(
    app: EtlCelery, tmp_path: Path
) -> None:
    app.conf.beat_schedule = beat_schedule(PIPELINES)
    store = str(tmp_path / "celerybeat-schedule")
    first = PersistentScheduler(app=app, schedule_filename=store)
    configured = dict(first.schedule)
    first.close()

    with shelve.open(store) as shelf:
        stored = dict(shelf["entries"])
    second = PersistentScheduler(app=app, schedule_filename=store)
    reloaded = dict(second.schedule)
    second.close()

    assert {"reconcile", "nightly:orders_daily"} <= set(stored)
    assert stored == configured
    assert reloaded == configured
    assert stored["reconcile"].task == "etl.reconcile"
