"""``python -m beat`` (or ``etl beat``): run Celery Beat with the pipelines' schedules.

Several may run at once for availability; one leads (see beat.scheduler)."""

from __future__ import annotations

import sys

from beat.scheduler import DatabaseScheduler
from etl.bootstrap import migrate_ledger
from etl.config import SettingsError, load_settings
from etl.logs import install_celery_hooks
from etl.service.checks import check_pipelines
from etl.worker.app import make_celery


def main() -> int:
    """Start Beat in the foreground."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"etl beat: error: {exc}", file=sys.stderr)
        return 2
    # The deployment's own pipelines (ETL_PIPELINE_MODULES) are scheduled too: one that
    # does not load stops the start, in one line (Beat writes no S3: no bucket check).
    pipelines = check_pipelines(settings.pipeline_modules, settings.pipeline_path)
    if not pipelines.ok:
        print(f"etl beat: error: not starting Beat: {pipelines.sentence()}", file=sys.stderr)
        return 2
    migrate_ledger(settings)  # the ledger's tables hold Beat's state: migrate first
    app = make_celery(settings)
    install_celery_hooks(settings.log_format, "beat")
    # In JSON mode every line is an event: no banner.
    quiet = settings.log_format == "json"
    app.Beat(loglevel=settings.log_level, scheduler=DatabaseScheduler, quiet=quiet).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
