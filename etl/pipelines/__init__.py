"""The pipeline registry: every pipeline this deployment knows, by name."""

from __future__ import annotations

import importlib
import os
import sys

from etl.domain.errors import UnknownPipeline
from etl.domain.intervals import DataInterval
from etl.domain.runs import Run
from etl.domain.schedules import CatchUp, Cron, Every, Schedule, Solar
from etl.domain.windows import describe_window, why_nothing_was_read
from etl.pipelines.base import Pipeline, RunParams, Source, SourceMode
from etl.pipelines.orders import ORDERS_DAILY

PIPELINES: dict[str, Pipeline] = {pipeline.name: pipeline for pipeline in (ORDERS_DAILY,)}


def load_pipeline_modules(modules: str, path: str = "") -> list[str]:
    """Import each comma-separated module and register its ``PIPELINES`` list; the
    directories of ``path`` (ETL_PIPELINE_PATH, separated like PATH) are searched first.

    Returns the names added. A module without PIPELINES, or a name already taken by
    another pipeline, is an error at start-up rather than a surprise at 02:00.
    """
    for directory in reversed([d for d in path.split(os.pathsep) if d.strip()]):
        resolved = os.path.abspath(directory.strip())
        if not os.path.isdir(resolved):
            raise ImportError(f"ETL_PIPELINE_PATH names {directory!r}, which is not a directory")
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
    found: dict[str, Pipeline] = {}
    for module_name in filter(None, (name.strip() for name in modules.split(","))):
        module = importlib.import_module(module_name)
        pipelines = getattr(module, "PIPELINES", None)
        if not isinstance(pipelines, list | tuple):
            raise ValueError(f"pipeline module {module_name} has no PIPELINES list")
        for pipeline in pipelines:
            if not isinstance(pipeline, Pipeline):
                raise ValueError(f"{module_name}.PIPELINES holds {pipeline!r}, not a Pipeline")
            registered = PIPELINES.get(pipeline.name) or found.get(pipeline.name)
            if registered is not None and registered is not pipeline:
                raise ValueError(
                    f"pipeline {pipeline.name!r} from {module_name} is already registered"
                )
            found[pipeline.name] = pipeline
    # All or nothing: a bad module leaves the registry as it was.
    PIPELINES.update(found)
    return list(found)


def interval_name(pipeline_name: str, interval: DataInterval) -> str:
    """An interval as its pipeline names it (a date, or the start of a finer one); the
    interval itself if the pipeline is no longer registered."""
    pipeline = PIPELINES.get(pipeline_name)
    return str(interval) if pipeline is None else pipeline.grain.name(interval)


def explain_run(run: Run) -> tuple[list[str], str | None]:
    """What a run read, a line per bound, and, for a run planned with no rows, why it read
    nothing (None otherwise); from its recorded window and its pipeline's source."""
    pipeline = PIPELINES.get(run.pipeline)
    time_column = pipeline.source.time_column if pipeline else None
    lag = pipeline.source.cursor_lag_s if pipeline else 0
    lines = describe_window(run.window, run.interval, time_column=time_column, cursor_lag_s=lag)
    empty = None
    if run.chunk_count == 0:
        empty = why_nothing_was_read(
            run.window, run.interval, time_column=time_column, cursor_lag_s=lag
        )
    return lines, empty


def get_pipeline(name: str) -> Pipeline:
    """The registered pipeline called ``name``."""
    try:
        return PIPELINES[name]
    except KeyError:
        raise UnknownPipeline(name, list(PIPELINES)) from None


__all__ = [
    "PIPELINES",
    "CatchUp",
    "Cron",
    "Every",
    "Pipeline",
    "RunParams",
    "Schedule",
    "Solar",
    "Source",
    "SourceMode",
    "UnknownPipeline",
    "explain_run",
    "get_pipeline",
    "interval_name",
]
