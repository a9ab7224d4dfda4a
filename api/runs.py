"""``/api/v1/runs``: trigger runs and report on them."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError

from api.context import api_services, json_body
from api.errors import ApiError, field_errors
from api.models import (
    CreateRunRequest,
    FieldError,
    RunListQuery,
    RunListResponse,
    RunResponse,
)
from etl.domain.runs import Run

bp = Blueprint("runs", __name__, url_prefix="/api/v1")

MAX_IDEMPOTENCY_KEY = 200
# The widest offset of any time zone (Pacific/Kiritimati): a cursor's moment is in UTC,
# and one with a wider offset was not made here.
MAX_UTC_OFFSET = timedelta(hours=14)


@bp.post("/runs")
def create_run() -> tuple[Response, int]:
    """Start a run: 202 with the run when created, 200 with it when the request repeats one."""
    wanted = json_body(CreateRunRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    services = api_services()
    try:
        run, created = services.run_service.start_run(
            wanted.pipeline,
            interval=wanted.requested_interval,
            params=wanted.params,
            idempotency_key=key,
        )
    except ValidationError as exc:
        raise ApiError(400, "invalid request", field_errors(exc, prefix="params.")) from None
    except ValueError as exc:  # an interval this pipeline does not have
        field = "interval" if wanted.interval is not None else "logical_date"
        raise ApiError(
            400, "invalid request", [FieldError(field=field, message=str(exc))]
        ) from None
    document = RunResponse.from_run(run).model_dump(mode="json")
    response = jsonify(document)
    response.headers["Location"] = f"/api/v1/runs/{run.id}"
    return response, 202 if created else 200


@bp.get("/runs/<run_id>")
def get_run(run_id: str) -> Response:
    """One run with its chunk progress."""
    ledger = api_services().ledger
    run = ledger.get_run(run_id)
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
    runs = api_services().ledger.list_runs(
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
    raw = f"{run.created_at.astimezone(UTC).isoformat()}|{run.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor stands for; 400 naming ``cursor`` if it is not ours.
    Whatever it decodes to reaches the ledger only as a moment in UTC with an offset some
    zone has (PostgreSQL refuses +23:59, which Python takes) and a printable id (no NUL)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, run_id = raw.split("|")
        moment = datetime.fromisoformat(created_at)
        offset = moment.utcoffset()
        if offset is None or abs(offset) > MAX_UTC_OFFSET:
            raise ValueError
        if not run_id or not run_id.isprintable():
            raise ValueError
        moment = moment.astimezone(UTC)  # OverflowError past year 1 or 9999
    except (ValueError, OverflowError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ApiError(
            400, "invalid request", [FieldError(field="cursor", message="not a page cursor")]
        ) from None
    return moment, run_id


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str) -> Response:
    """Cancel a run: chunks not yet started are skipped, nothing is committed."""
    run = api_services().run_service.cancel_run(run_id)
    return jsonify(RunResponse.from_run(run).model_dump(mode="json"))


@bp.post("/runs/<run_id>/retry")
def retry_run(run_id: str) -> tuple[Response, int]:
    """Retry a failed run: its unfinished chunks run again, then the commit."""
    run = api_services().run_service.retry_run(run_id)
    return jsonify(RunResponse.from_run(run).model_dump(mode="json")), 202
