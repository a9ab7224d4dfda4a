"""``/api/v1/backfills``: one run per data interval over a range, and their progress."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from pydantic import ValidationError

from api.context import api_services, json_body
from api.errors import ApiError, field_errors
from api.models import (
    BackfillDate,
    BackfillResponse,
    CreateBackfillRequest,
    CreateBackfillResponse,
    FieldError,
    IntervalResponse,
)
from etl.service.backfills import cancel_backfill as cancel_backfill_runs
from etl.service.backfills import start_backfill

bp = Blueprint("backfills", __name__, url_prefix="/api/v1")


@bp.post("/backfills")
def create_backfill() -> tuple[Response, int]:
    """Start a backfill: 202 with it and the plan per date; 200 for a dry run or when
    every date was skipped (nothing started)."""
    wanted = json_body(CreateBackfillRequest)
    services = api_services()
    try:
        backfill, plans = start_backfill(
            services.run_service,
            wanted.pipeline,
            start=wanted.start,
            end=wanted.end,
            max_active=wanted.max_active,
            reprocess=wanted.reprocess,
            params=wanted.params,
            dry_run=wanted.dry_run,
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc, prefix="params.")) from None
    except ValueError as exc:
        raise ApiError(
            400, "invalid request", [FieldError(field="end", message=str(exc))]
        ) from None
    document = CreateBackfillResponse(
        backfill=(
            None
            if backfill is None
            else BackfillResponse.from_backfill(
                backfill, services.ledger.backfill_runs(backfill.id)
            )
        ),
        dates=[
            BackfillDate(
                logical_date=p.logical_date,
                interval=IntervalResponse.of(p.interval),
                run=p.run,
                reason=p.reason,
            )
            for p in plans
        ],
    ).model_dump(mode="json")
    response = jsonify(document)
    if backfill is not None:
        response.headers["Location"] = f"/api/v1/backfills/{backfill.id}"
    return response, 202 if backfill is not None else 200


@bp.get("/backfills/<backfill_id>")
def get_backfill(backfill_id: str) -> Response:
    """A backfill with its progress and its runs."""
    ledger = api_services().ledger
    backfill = ledger.get_backfill(backfill_id)
    runs = ledger.backfill_runs(backfill_id)
    return jsonify(BackfillResponse.from_backfill(backfill, runs).model_dump(mode="json"))


@bp.post("/backfills/<backfill_id>/cancel")
def cancel_backfill(backfill_id: str) -> Response:
    """Cancel every run of a backfill that has not ended; returns the backfill."""
    services = api_services()
    runs = cancel_backfill_runs(services.run_service, backfill_id)
    backfill = services.ledger.get_backfill(backfill_id)
    return jsonify(BackfillResponse.from_backfill(backfill, runs).model_dump(mode="json"))
