"""The composition root: builds the adapters a process needs from Settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from etl.adapters.db import SqlSource, make_engine
from etl.adapters.ledger import Ledger, upgrade
from etl.adapters.s3 import S3PartWriter, make_s3_client
from etl.config import Settings
from etl.pipelines import Pipeline, load_pipeline_modules


@dataclass
class Services:
    """What the run steps and entry points work with: the ledger, sources and S3."""

    settings: Settings
    ledger: Ledger
    source_engine: Engine
    parts: S3PartWriter
    _sources: dict[str, SqlSource] = field(default_factory=dict)

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


def build_services(settings: Settings, *, migrate: bool = True) -> Services:
    """Engines, ledger and S3 writer from Settings; runs the ledger migration by default."""
    load_pipeline_modules(settings.pipeline_modules)
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
    )
