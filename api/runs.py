"""``/api/v1/runs``: trigger runs and report on them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import ValidationError

from api.errors import ApiError, field_errors
from api.models import CreateRunRequest, FieldError, RunListResponse, RunResponse
from etl.domain.runs import RunState
from etl.ledger import IdempotencyConflict, RunNotFound
from etl.pipelines import UnknownPipeline
from etl.runs import EnqueueFailed, RunNotCancellable, RunNotRetryable

bp = Blueprint("runs", __name__, url_prefix="/api/v1")

MAX_IDEMPOTENCY_KEY = 200
MAX_LIST_LIMIT = 500


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
    """Recent runs, newest first; filter by ``pipeline`` and ``state``, cap with ``limit``."""
    args = request.args
    unknown = sorted(set(args) - {"pipeline", "state", "limit"})
    if unknown:
        raise ApiError(
            400,
            "invalid request",
            [FieldError(field=name, message="unknown query parameter") for name in unknown],
        )
    state = args.get("state")
    if state is not None and state not in {s.value for s in RunState}:
        raise ApiError(
            400, "invalid request", [FieldError(field="state", message=f"unknown state {state!r}")]
        )
    limit_text = args.get("limit", "50")
    # isdigit() alone is true for "²", which int() refuses.
    limit_ok = limit_text.isascii() and limit_text.isdigit()
    if not limit_ok or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
        raise ApiError(
            400,
            "invalid request",
            [FieldError(field="limit", message=f"must be 1 to {MAX_LIST_LIMIT}")],
        )
    runs = _services().ledger.list_runs(
        pipeline=args.get("pipeline"),
        state=RunState(state) if state else None,
        limit=int(limit_text),
    )
    return jsonify(
        RunListResponse(runs=[RunResponse.from_run(run) for run in runs]).model_dump(mode="json")
    )


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
