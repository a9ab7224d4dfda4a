"""``/api/v1/pipelines``: what can run, when it runs next, and how it last went."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify

from api.context import api_services
from api.errors import ApiError
from api.models import IntervalResponse, PipelineListResponse, PipelineResponse, RunResponse
from etl.adapters.ledger import Ledger
from etl.domain.runs import RunState
from etl.pipelines import PIPELINES, Pipeline

bp = Blueprint("pipelines", __name__, url_prefix="/api/v1")


def _ledger() -> Ledger:
    ledger: Ledger = api_services().ledger
    return ledger


def describe(pipeline: Pipeline, ledger: Ledger, moment: datetime) -> PipelineResponse:
    """A pipeline as the API shows it."""
    last = ledger.latest_run(pipeline.name)
    success = ledger.latest_run(pipeline.name, RunState.SUCCEEDED)
    schedule: dict[str, Any] | None = pipeline.schedule.describe() if pipeline.schedule else None
    next_run_at = pipeline.next_run_at(moment)
    return PipelineResponse(
        name=pipeline.name,
        description=pipeline.description,
        schedule=schedule,
        catch_up=pipeline.catch_up.value,
        max_active_runs=pipeline.max_active_runs,
        output_format=pipeline.output_format,
        incremental=pipeline.source.incremental,
        mode=str(pipeline.source.mode),
        interval=pipeline.grain.describe(),
        next_run_at=next_run_at,
        next_interval=(
            IntervalResponse.of(interval)
            if (interval := pipeline.next_interval(moment)) is not None
            else None
        ),
        last_run=RunResponse.from_run(last) if last else None,
        last_success=RunResponse.from_run(success) if success else None,
    )


@bp.get("/pipelines")
def list_pipelines() -> Response:
    """Every registered pipeline, by name."""
    moment = datetime.now(UTC)
    ledger = _ledger()
    listing = PipelineListResponse(
        pipelines=[describe(PIPELINES[name], ledger, moment) for name in sorted(PIPELINES)]
    )
    return jsonify(listing.model_dump(mode="json"))


@bp.get("/pipelines/<name>")
def get_pipeline(name: str) -> Response:
    """One pipeline."""
    pipeline = PIPELINES.get(name)
    if pipeline is None:
        raise ApiError(404, f"no pipeline named {name!r}")
    return jsonify(describe(pipeline, _ledger(), datetime.now(UTC)).model_dump(mode="json"))
