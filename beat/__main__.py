"""``python -m beat`` (or ``etl beat``): run Celery Beat with the pipelines' schedules."""

from __future__ import annotations

import os
import sys
import tempfile

from beat.schedule import beat_schedule
from etl.celery_app import make_celery
from etl.config import SettingsError, load_settings
from etl.pipelines import PIPELINES, load_pipeline_modules


def main() -> int:
    """Start Beat in the foreground."""
    try:
        settings = load_settings()
        # The deployment's own pipelines (ETL_PIPELINE_MODULES) are scheduled too.
        load_pipeline_modules(settings.pipeline_modules)
    except (SettingsError, ImportError, ValueError) as exc:
        print(f"etl beat: error: {exc}", file=sys.stderr)
        return 2
    app = make_celery(settings)
    app.conf.beat_schedule = beat_schedule(PIPELINES)
    state_file = os.path.join(tempfile.gettempdir(), "etl-celerybeat-schedule")
    app.Beat(loglevel=settings.log_level, schedule=state_file).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
