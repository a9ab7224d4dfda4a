"""The composition root: builds the adapters and services a process needs from Settings.

Every entry point (the worker, the API, the CLI, Beat, the demo) gets its ledger, run
lifecycle and dead-letter service here; none builds them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from etl.adapters.db import SqlSource, make_engine
from etl.adapters.ledger import Ledger, upgrade
from etl.adapters.s3 import S3PartWriter, make_s3_client
from etl.config import Settings
from etl.pipelines import Pipeline, load_pipeline_modules
from etl.service.dead_letters import DeadLetterService
from etl.service.lifecycle import RunService
from etl.service.outputs import RunReader
from etl.service.ports import Enqueue
from etl.worker.app import celery_enqueue, make_celery


@dataclass
class Services:
    """What the run steps and entry points work with: the ledger, sources and S3, the
    Enqueue port, and the services built on them (the run lifecycle, dead letters)."""

    settings: Settings
    ledger: Ledger
    source_engine: Engine
    parts: S3PartWriter
    enqueue: Enqueue
    runs: RunService = field(init=False)
    dead_letters: DeadLetterService = field(init=False)
    _sources: dict[str, SqlSource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = RunService(self.ledger, self.enqueue)
        self.dead_letters = DeadLetterService.for_settings(self.ledger, self.settings, self.runs)

    def source_for(self, pipeline: Pipeline) -> SqlSource:
        """The reader of a pipeline's source, on the pooled source engine."""
        if pipeline.name not in self._sources:
            self._sources[pipeline.name] = SqlSource(self.source_engine, pipeline.source)
        return self._sources[pipeline.name]

    def close(self) -> None:
        """Release pooled connections."""
        self.ledger.engine.dispose()
        if self.source_engine is not self.ledger.engine:
            self.source_engine.dispose()


def build_services(
    settings: Settings, *, migrate: bool = True, enqueue: Enqueue | None = None
) -> Services:
    """Engines, ledger, S3 writer and services from Settings. Runs the ledger migration
    unless ``migrate=False``; tasks are sent through ``enqueue``, by default a Celery app
    of these settings. Opens no connection other than the migration's."""
    load_pipeline_modules(settings.pipeline_modules, settings.pipeline_path)
    ledger_engine = make_engine(
        settings.database_url, settings.db_pool_size, settings.database_ssl_args
    )
    if settings.effective_source_database_url == settings.database_url:
        source_engine = ledger_engine
    else:
        source_engine = make_engine(
            settings.effective_source_database_url,
            settings.db_pool_size,
            settings.database_ssl_args,
        )
    if migrate:
        upgrade(ledger_engine)
    client = make_s3_client(settings.s3_endpoint_url, settings.s3_region)
    return Services(
        settings=settings,
        ledger=Ledger(ledger_engine),
        source_engine=source_engine,
        parts=S3PartWriter(client, settings.s3_bucket),
        enqueue=enqueue if enqueue is not None else celery_enqueue(make_celery(settings)),
    )


def build_run_reader(settings: Settings) -> RunReader:
    """A reader of the runs in ``ETL_S3_BUCKET`` under ``ETL_S3_PREFIX`` (S3 alone, no
    ledger). Opens no connection."""
    client = make_s3_client(settings.s3_endpoint_url, settings.s3_region)
    return RunReader(S3PartWriter(client, settings.s3_bucket), settings.s3_prefix)


def migrate_ledger(settings: Settings) -> int:
    """Create or migrate the ledger's tables, once per deployment start (``etl db
    upgrade``, the worker, ``etl api`` before gunicorn forks, Beat); returns the schema
    version."""
    engine = make_engine(settings.database_url, ssl_args=settings.database_ssl_args)
    try:
        return upgrade(engine)
    finally:
        engine.dispose()
