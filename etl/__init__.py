"""nightly-etl: PostgreSQL chunks -> Celery tasks over RabbitMQ -> parts and a manifest on S3.

This package is the whole surface a pipeline author needs (docs/pipelines.md)::

    from etl import BatchResult, Cron, Pipeline, RowRejected, Source, map_rows

The rest of ``etl.*`` is the engine's inside and may change between versions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the module it lives in. They are imported on first use, so that
# importing any part of the engine (every process starts with etl.config) does not load
# the pipeline machinery, and nothing connects anywhere at import.
_PUBLIC = {
    "Pipeline": "etl.pipelines.base",
    "Source": "etl.pipelines.base",
    "SourceMode": "etl.pipelines.base",
    "RunParams": "etl.pipelines.base",
    "Cron": "etl.domain.schedules",
    "Every": "etl.domain.schedules",
    "Solar": "etl.domain.schedules",
    "CatchUp": "etl.domain.schedules",
    "BatchResult": "etl.domain.transform",
    "Record": "etl.domain.transform",
    "Row": "etl.domain.transform",
    "RowRejected": "etl.domain.transform",
    "Transform": "etl.domain.transform",
    "map_rows": "etl.domain.transform",
    "ColumnarTransform": "etl.formats.columnar",
}

__all__ = [
    "BatchResult",
    "CatchUp",
    "ColumnarTransform",
    "Cron",
    "Every",
    "Pipeline",
    "Record",
    "Row",
    "RowRejected",
    "RunParams",
    "Solar",
    "Source",
    "SourceMode",
    "Transform",
    "__version__",
    "map_rows",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from etl.domain.schedules import CatchUp, Cron, Every, Solar
    from etl.domain.transform import BatchResult, Record, Row, RowRejected, Transform, map_rows
    from etl.formats.columnar import ColumnarTransform
    from etl.pipelines.base import Pipeline, RunParams, Source, SourceMode


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'etl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
