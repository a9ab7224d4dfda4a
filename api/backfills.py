"""``/api/v1/backfills``: one run per logical date over a range, and their progress."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError

from api.errors import ApiError, field_errors
from api.models import (
    BackfillDate,
    BackfillResponse,
    CreateBackfillRequest,
    CreateBackfillResponse,
    FieldError,
)
from etl.adapters.ledger import BackfillConflict, BackfillNotFound
from etl.pipelines import UnknownPipeline
from etl.service.lifecycle import EnqueueFailed

bp = Blueprint("backfills", __name__, url_prefix="/api/v1")


def _services() -> Any:
    return current_app.extensions["etl"]


@bp.post("/backfills")
def create_backfill() -> tuple[Response, int]:
    """Start a backfill: 202 with it and the plan per date; 200 for a dry run or when
    every date was skipped (nothing started)."""
    if not request.is_json:
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "the body must be a JSON object",
            [FieldError(field="body", message="not a JSON object")],
        )
    try:
        wanted = CreateBackfillRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc)) from None
    services = _services()
    try:
        backfill, plans = services.run_service.start_backfill(
            wanted.pipeline,
            start=wanted.start,
            end=wanted.end,
            max_active=wanted.max_active,
            reprocess=wanted.reprocess,
            params=wanted.params,
            dry_run=wanted.dry_run,
        )
    except UnknownPipeline as exc:
        raise ApiError(
            400, "invalid request", [FieldError(field="pipeline", message=str(exc))]
        ) from None
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc, prefix="params.")) from None
    except ValueError as exc:
        raise ApiError(
            400, "invalid request", [FieldError(field="end", message=str(exc))]
        ) from None
    except BackfillConflict as exc:
        raise ApiError(409, str(exc)) from None
    except EnqueueFailed as exc:
        raise ApiError(503, str(exc)) from None
    document = CreateBackfillResponse(
        backfill=(
            None
            if backfill is None
            else BackfillResponse.from_backfill(
                backfill, services.ledger.backfill_runs(backfill.id)
            )
        ),
        dates=[
            BackfillDate(logical_date=p.logical_date, run=p.run, reason=p.reason) for p in plans
        ],
    ).model_dump(mode="json")
    response = jsonify(document)
    if backfill is not None:
        response.headers["Location"] = f"/api/v1/backfills/{backfill.id}"
    return response, 202 if backfill is not None else 200


@bp.get("/backfills/<backfill_id>")
def get_backfill(backfill_id: str) -> Response:
    """A backfill with its progress and its runs."""
    ledger = _services().ledger
    try:
        backfill = ledger.get_backfill(backfill_id)
    except BackfillNotFound as exc:
        raise ApiError(404, str(exc)) from None
    runs = ledger.backfill_runs(backfill_id)
    return jsonify(BackfillResponse.from_backfill(backfill, runs).model_dump(mode="json"))


@bp.post("/backfills/<backfill_id>/cancel")
def cancel_backfill(backfill_id: str) -> Response:
    """Cancel every run of a backfill that has not ended; returns the backfill."""
    services = _services()
    try:
        runs = services.run_service.cancel_backfill(backfill_id)
    except BackfillNotFound as exc:
        raise ApiError(404, str(exc)) from None
    backfill = services.ledger.get_backfill(backfill_id)
    return jsonify(BackfillResponse.from_backfill(backfill, runs).model_dump(mode="json"))
