"""``/api/v1/runs``: trigger runs and report on them."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError

from api.errors import ApiError, field_errors
from api.models import (
    CreateRunRequest,
    FieldError,
    RunListQuery,
    RunListResponse,
    RunResponse,
)
from etl.adapters.ledger import IdempotencyConflict, RunNotFound
from etl.domain.runs import Run
from etl.pipelines import UnknownPipeline
from etl.service.lifecycle import EnqueueFailed, RunNotCancellable, RunNotRetryable

bp = Blueprint("runs", __name__, url_prefix="/api/v1")

MAX_IDEMPOTENCY_KEY = 200


def _services() -> Any:
    return current_app.extensions["etl"]


@bp.post("/runs")
def create_run() -> tuple[Response, int]:
    """Start a run: 202 with the run when created, 200 with it when the request repeats one."""
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
        wanted = CreateRunRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc)) from None
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    services = _services()
    try:
        run, created = services.run_service.start_run(
            wanted.pipeline,
            logical_date=wanted.logical_date,
            params=wanted.params,
            idempotency_key=key,
        )
    except UnknownPipeline as exc:
        raise ApiError(
            400, "invalid request", [FieldError(field="pipeline", message=str(exc))]
        ) from None
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc, prefix="params.")) from None
    except IdempotencyConflict as exc:
        raise ApiError(409, str(exc)) from None
    except EnqueueFailed as exc:
        raise ApiError(503, str(exc)) from None
    document = RunResponse.from_run(run).model_dump(mode="json")
    response = jsonify(document)
    response.headers["Location"] = f"/api/v1/runs/{run.id}"
    return response, 202 if created else 200


@bp.get("/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """One run with its chunk progress."""
    ledger = _services().ledger
    try:
        run = ledger.get_run(run_id)
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return jsonify(RunResponse.from_run(run, ledger.chunk_counts(run_id)).model_dump(mode="json"))


@bp.get("/runs")
def list_runs() -> Response:
    """Runs, newest first, a page at a time; filter by pipeline, state, trigger and
    logical date range."""
    try:
        query = RunListQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc)) from None
    after = decode_cursor(query.cursor) if query.cursor else None
    runs = _services().ledger.list_runs(
        pipeline=query.pipeline,
        state=query.state,
        trigger=query.trigger,
        date_from=query.logical_date_from,
        date_to=query.logical_date_to,
        after=after,
        limit=query.limit,
    )
    next_cursor = encode_cursor(runs[-1]) if len(runs) == query.limit else None
    page = RunListResponse(
        runs=[RunResponse.from_run(run) for run in runs], next_cursor=next_cursor
    )
    return jsonify(page.model_dump(mode="json"))


def encode_cursor(run: Run) -> str:
    """An opaque page cursor: where the page's last run sits in the listing order."""
    raw = f"{run.created_at.isoformat()}|{run.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor stands for; 400 naming ``cursor`` if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split("|")
        moment = datetime.fromisoformat(created_at)
        if moment.tzinfo is None or not run_id:
            raise ValueError
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ApiError(
            400, "invalid request", [FieldError(field="cursor", message="not a page cursor")]
        ) from None
    return moment, run_id


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str) -> Response:
    """Cancel a run: chunks not yet started are skipped, nothing is committed."""
    try:
        run = _services().run_service.cancel_run(run_id)
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except RunNotCancellable as exc:
        raise ApiError(409, str(exc)) from None
    return jsonify(RunResponse.from_run(run).model_dump(mode="json"))


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str) -> tuple[Response, int]:
    """Retry a failed run: its unfinished chunks run again, then the commit."""
    try:
        run = _services().run_service.retry_run(run_id)
    except RunNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except RunNotRetryable as exc:
        raise ApiError(409, str(exc)) from None
    except EnqueueFailed as exc:
        raise ApiError(503, str(exc)) from None
    return jsonify(RunResponse.from_run(run).model_dump(mode="json")), 202
