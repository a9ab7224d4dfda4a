"""The pipeline registry: every pipeline this deployment knows, by name."""

from __future__ import annotations

import importlib

from etl.domain.errors import UnknownPipeline
from etl.domain.intervals import DataInterval
from etl.domain.schedules import CatchUp, Cron, Every, Schedule, Solar
from etl.pipelines.base import Pipeline, RunParams, Source, SourceMode
from etl.pipelines.orders import ORDERS_DAILY

PIPELINES: dict[str, Pipeline] = {pipeline.name: pipeline for pipeline in (ORDERS_DAILY,)}


def load_pipeline_modules(modules: str) -> list[str]:
    """Import each comma-separated module and register its ``PIPELINES`` list.

    Returns the names added. A module without PIPELINES, or a name already taken by
    another pipeline, is an error at start-up rather than a surprise at 02:00.
    """
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
    "get_pipeline",
    "interval_name",
]
